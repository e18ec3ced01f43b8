"""The CUDA paths: the rules in bf16 with channels_last, FFCV loading onto the device, a training run.
Skipped where there is no GPU (CI); run on a GPU machine with `pytest tests/test_gpu.py`."""
import pytest
import torch
import torch.nn.functional as F

import dlwt
from dlwt.data.imagenet import extract
from dlwt.data.loaders import make_loader
from dlwt.data.stages import convert_stage
from dlwt.data.synthetic import write_archives
from dlwt.rules import FeedbackConv2d

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("rule", ["fa", "ss", "wm", "kp"])
def test_conv_gradients_on_cuda_match_cpu(rule):
    torch.manual_seed(0)
    layer = FeedbackConv2d(8, 16, 3, 2, 1, groups=2, rule=rule).double()
    x = torch.randn(4, 8, 12, 12, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    gpu = FeedbackConv2d(8, 16, 3, 2, 1, groups=2, rule=rule).double().to(CUDA)
    gpu.load_state_dict(layer.state_dict())
    xg = x.detach().to(CUDA).requires_grad_()
    gpu(xg).square().sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad)
    torch.testing.assert_close(gpu.weight.grad.cpu(), layer.weight.grad)


@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_bf16_channels_last_with_b_equal_w_matches_backprop_on_cuda(rule):
    x = torch.randn(8, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=CUDA)
    grads = {}
    for name in ("bp", rule):
        torch.manual_seed(0)
        model = dlwt.models.build("resnet18", 10, name, "small").to(CUDA, memory_format=torch.channels_last)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, dlwt.rules.FEEDBACK_TYPES):
                    m.feedback.copy_(m.weight)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if n.endswith("weight")}
    for n, g in grads["bp"].items():
        torch.testing.assert_close(grads[rule][n], g, rtol=3e-2, atol=1e-3)


def test_mirror_step_on_cuda_aligns_b():
    torch.manual_seed(0)
    layer = FeedbackConv2d(32, 64, 3, 1, 1, rule="wm").to(CUDA)
    dlwt.mirror_step(layer, steps=300, batch_size=32, lr=0.05, weight_decay=0.05,
                     generator=torch.Generator(device=CUDA).manual_seed(0))
    assert dlwt.alignment(layer)[""]["angle_deg"] < 10


@pytest.mark.timeout(300)
def test_ffcv_loader_onto_cuda(tmp_path):
    raw = tmp_path / "raw" / "synthetic"
    write_archives(str(raw), classes=3, train_per_class=4, val_per_class=3, size=64)
    extract(str(raw), str(tmp_path), "synthetic")
    convert_stage({"root": str(tmp_path), "dataset": "synthetic", "max_resolution": 64, "page_size": 1 << 21,
                   "num_workers": 1})
    cfg = {"root": str(tmp_path), "dataset": "synthetic", "batch_size": 4, "num_workers": 1, "res": 32}
    for split in ("train", "val"):
        x, y = next(iter(make_loader(split, cfg, CUDA)))
        assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert abs(float(x.mean())) < 3  # normalised
