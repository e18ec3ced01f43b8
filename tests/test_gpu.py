"""The CUDA paths: the rules in bf16 with channels_last, FFCV loading onto the device, a training run.
Skipped where there is no GPU (CI); run on a GPU machine with `pytest tests/test_gpu.py`. The tests that
convert to FFCV skip without FFCV (a bare CUDA image: `make gpu-check` covers those machines)."""
import pytest
import torch
import torch.nn.functional as F

import dlwt
from dlwt.data.imagenet import extract
from dlwt.data.synthetic import write_archives
from dlwt.rules import FeedbackConv2d


def _ffcv():
    """FFCV's convert and loader, or a skip where FFCV is not installed."""
    pytest.importorskip("ffcv")
    from dlwt.data.loaders import make_loader
    from dlwt.data.stages import convert_stage

    return convert_stage, make_loader

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
    convert_stage, make_loader = _ffcv()
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


# --- whole commands on the GPU: what the first user with a GPU runs (`pytest tests/test_gpu.py`, minutes) ---

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_params(tmp_path_factory):
    """ci.yaml's synthetic data and settings, on CUDA with bf16 and channels_last (what ImageNet runs)."""
    from dlwt.params import deep_merge, load

    convert_stage, _ = _ffcv()
    root = tmp_path_factory.mktemp("gpu")
    raw = root / "raw" / "synthetic"
    write_archives(str(raw), classes=3, train_per_class=16, val_per_class=4, size=64)
    extract(str(raw), str(root), "synthetic")
    convert_stage({"root": str(root), "dataset": "synthetic", "max_resolution": 64, "page_size": 1 << 21,
                   "num_workers": 1})
    params = deep_merge(load(os.path.join(REPO, "params.yaml"), [os.path.join(REPO, "config/ci.yaml")]),
                        {"data": {"root": str(root), "num_workers": 2},
                         "train": {"device": "cuda", "amp": "bf16", "channels_last": True, "epochs": 2,
                                   "check_every": 2, "log_every": 2}})
    path = root / "params.yaml"
    path.write_text(json.dumps(params))
    return root, path


def _dlwt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "dlwt", *args], capture_output=True, text=True, **kw)


@pytest.mark.timeout(600)
def test_train_sigterm_resume_and_evaluate_on_cuda(gpu_params):
    root, params = gpu_params
    run = root / "runs" / "resnet18-wm-s0"
    cmd = [sys.executable, "-m", "dlwt", "train", "--params", str(params), "--arch", "resnet18", "--rule", "wm",
           "--out", str(run)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends ahead of the time limit
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 143), err[-2000:]
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # RNG state comes back on CPU
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ev = _dlwt("evaluate", "--params", str(params), "--arch", "resnet18", "--rule", "wm", "--checkpoint",
               str(run / "checkpoints" / "final.pt"), "--out", str(root / "eval.json"), timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads((root / "eval.json").read_text())
    assert result["val_images"] == 12 and result["val_top1_err"] <= 1.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[-1]["res"] == 32


@pytest.mark.timeout(600)
def test_compiled_training_step_on_cuda():
    torch.manual_seed(0)
    model = dlwt.models.build("resnet18", 10, "kp", "small").to(CUDA, memory_format=torch.channels_last)
    step = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=CUDA)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(step(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss).item()
    torch.testing.assert_close(model.fc.feedback.grad, model.fc.weight.grad)


@pytest.mark.timeout(600)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_rank_nccl_training(gpu_params):
    from dlwt.params import deep_merge

    root, params = gpu_params
    p = deep_merge(json.loads(params.read_text()), {"train": {"gpus": 2, "epochs": 1}})
    path = root / "p2.yaml"
    path.write_text(json.dumps(p))
    proc = _dlwt("train", "--params", str(path), "--arch", "resnet18", "--rule", "kp", "--out",
                 str(root / "ddp"), timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (root / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val_images"] == 12  # every validation image counted once over both ranks


@pytest.mark.timeout(600)
def test_doctor_on_cuda(gpu_params):
    root, params = gpu_params
    proc = _dlwt("doctor", "--params", str(params), "--steps", "3", timeout=500, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((root / "results" / "ci" / "doctor.json").read_text())
    assert report["device"].startswith("cuda") and {r["rule"] for r in report["steps"]} >= {"bp", "wm"}
