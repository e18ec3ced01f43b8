"""The loaders' contracts a trainer relies on: one device path (the meta device stands in for CUDA), every
validation image counted once under DDP, epochs that are a function of (seed, epoch) and can start mid-way,
progressive resizing. Data: test_data_ffcv's tiny synthetic ILSVRC set (3 classes, 12 train / 9 val)."""
import pytest
import torch

from dlwt.data.loaders import make_loader, res_for_epoch
from test_data_ffcv import _cfg, data  # noqa: F401  (conftest's ffcv_synthetic: extracted and converted once)

pytestmark = pytest.mark.timeout(300)  # run alone, the first test builds conftest's .beton set


def _all(loader, **epoch):
    loader.set_epoch(**{"epoch": 0, **epoch})
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("split", ["train", "val"])
def test_ffcv_pipeline_onto_a_non_cpu_device_builds_and_normalises_like_the_cpu_one(data, split):  # noqa: F811
    # ToDevice(meta) takes FFCV's non-CPU branches, as ToDevice(cuda) would: NormalizeImage there imports cupy
    root, _ = data
    cpu = next(iter(make_loader(split, _cfg(root), torch.device("cpu"))))
    meta = next(iter(make_loader(split, _cfg(root), torch.device("meta"))))
    for a, b in zip(cpu, meta):
        assert b.is_meta and a.shape == b.shape and a.dtype == b.dtype
    assert cpu[0].dtype == torch.float32 and cpu[0].is_contiguous(memory_format=torch.channels_last)
    assert abs(float(cpu[0].mean())) < 3  # normalised, not 0..255


@pytest.mark.parametrize("backend", ["ffcv", "torchvision"])
def test_validation_under_ddp_counts_every_image_exactly_once(data, backend):  # noqa: F811
    root, _ = data
    whole = _all(make_loader("val", _cfg(root, backend=backend), "cpu"))[1]
    shards = [_all(make_loader("val", _cfg(root, backend=backend), "cpu", rank=r, world=2))[1] for r in (0, 1)]
    assert sum(len(s) for s in shards) == len(whole) == 9  # no padding duplicates (9 is odd)
    assert sorted(torch.cat(shards).tolist()) == sorted(whole.tolist())


def test_torchvision_epochs_are_seeded_and_start_mid_way(data):  # noqa: F811
    root, _ = data
    cfg = _cfg(root, backend="torchvision", batch_size=3, num_workers=0)
    x, y = _all(make_loader("train", cfg, "cpu"), epoch=2)
    again = _all(make_loader("train", {**cfg, "num_workers": 2}, "cpu"), epoch=2)  # workers change nothing
    torch.testing.assert_close(again[0], x, rtol=0, atol=0)
    assert torch.equal(again[1], y)
    other = _all(make_loader("train", cfg, "cpu"), epoch=3)[0]
    assert not torch.equal(other, x)  # another epoch: another order and other crops
    tail = _all(make_loader("train", cfg, "cpu"), epoch=2, start=2)  # a run resumed after 2 batches
    assert torch.equal(tail[0], x[6:]) and torch.equal(tail[1], y[6:])


@pytest.mark.parametrize("backend", ["ffcv", "torchvision"])
def test_progressive_resizing_changes_the_train_resolution_by_epoch(data, backend):  # noqa: F811
    root, _ = data
    cfg = _cfg(root, backend=backend, res=32, min_res=16, ramp=[1, 3])
    assert [res_for_epoch({**cfg, "ramp": (1, 3)}, e) for e in range(5)] == [16, 16, 24, 32, 32]
    loader = make_loader("train", cfg, "cpu")
    assert next(iter(loader))[0].shape[-1] == 16
    loader.set_epoch(2, res=res_for_epoch(cfg, 2))
    assert next(iter(loader))[0].shape[-1] == 24
    loader.set_epoch(4, res=res_for_epoch(cfg, 4))
    assert next(iter(loader))[0].shape[-1] == 32
