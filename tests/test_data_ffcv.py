"""Data stage end to end on tiny synthetic ILSVRC archives: extract -> convert (FFCV) -> both loaders.

    pytest tests/test_data_ffcv.py -q        # ~1 min on 2 CPU cores, mostly numba JIT of FFCV pipelines

Images are coloured by class (synthetic.palette), so a batch's pixels say which label it must carry.
"""

import json
import os
import shutil

import pytest
import torch

from conftest import FFCV_TINY as TINY
from dlwt.data import DataError
from dlwt.data.config import MEAN, STD
from dlwt.data.loaders import make_loader
from dlwt.data.stages import convert_stage

pytestmark = pytest.mark.timeout(300)  # the first test also builds the session's .beton set (numba JIT)


def _cfg(root, **kw):
    return {"root": str(root), "dataset": "synthetic", "batch_size": 4, "num_workers": 1, "res": 32, **kw}


@pytest.fixture
def data(ffcv_synthetic):
    """3 classes x 4 train / 3 val images, 64 px: extracted and converted once per test run (conftest)."""
    return ffcv_synthetic


def _classes_from_pixels(x, rec):
    """Nearest class colour to each image's mean colour (images de-normalised back to 0..255)."""
    rgb = x.float().mean((2, 3)) * torch.tensor(STD) + torch.tensor(MEAN)
    colours = torch.tensor([c["colour"] for c in sorted(rec["classes"], key=lambda c: c["wnid"])]).float()
    return torch.cdist(rgb, colours).argmin(1)


def _epoch(loader):
    xs, ys = zip(*[(x.clone(), y.clone()) for x, y in loader])
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("backend", ["ffcv", "torchvision"])
def test_every_image_gets_its_true_label(data, backend):
    root, rec = data
    for split, n in (("train", 12), ("val", 9)):
        loader = make_loader(split, _cfg(root, backend=backend), torch.device("cpu"))
        assert loader.num_images == n and loader.num_classes == 3
        x, y = _epoch(loader)
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert abs(x.mean().item()) < 3 and x.std().item() > 0.5  # normalised, not 0..255 or 0..1
        assert torch.equal(_classes_from_pixels(x, rec), y), (
            f"{backend} {split}: a label does not match its image"
        )
        assert torch.bincount(y, minlength=3).tolist() == [n // 3] * 3  # each image once per epoch


def test_backends_agree_on_val(data):
    root, _ = data
    xf, yf = _epoch(make_loader("val", _cfg(root, backend="ffcv"), torch.device("cpu")))
    xt, yt = _epoch(make_loader("val", _cfg(root, backend="torchvision"), torch.device("cpu")))
    assert yf.tolist() == yt.tolist() and len(yf) == 9  # same images, same (sorted) order; last batch of 1
    # same centre crop; differences only from FFCV's stored JPEG re-encoding and resize kernels
    assert (xf - xt).abs().mean().item() < 0.06, (xf - xt).abs().mean().item()  # measured 0.024


def test_sidecar_records_the_conversion(data):
    root, rec = data
    for split, n in (("train", 4), ("val", 3)):
        beton = root / "synthetic" / "ffcv" / f"{split}.beton"
        info = json.loads((root / "synthetic" / "ffcv" / f"{split}.beton.json").read_text())
        assert info["bytes"] == beton.stat().st_size
        assert info["per_class"] == {c["wnid"]: n for c in rec["classes"]}
        assert info["skipped_corrupt"] == [] and len(info["inputs_sha256"]) == 64
        assert info["settings"]["max_resolution"] == 64
    assert not list((root / "synthetic" / "ffcv").glob("*.tmp-*"))


@pytest.fixture
def corrupt(data, tmp_path):
    """A copy of the extracted tree with one val JPEG cut in half (a truncated download)."""
    root, rec = data
    shutil.copytree(root / "synthetic" / "images", tmp_path / "synthetic" / "images")
    bad = sorted((tmp_path / "synthetic" / "images" / "val").rglob("*.JPEG"))[4]
    data_ = bad.read_bytes()
    bad.write_bytes(data_[: len(data_) // 2])
    return tmp_path, bad


def test_corrupt_jpeg_skipped_and_counted(corrupt, data, capfd):
    root, bad = corrupt
    info = convert_stage({"root": str(root), "dataset": "synthetic", **TINY}, splits=("val",))["val"]
    rel = os.path.relpath(bad, root / "synthetic" / "images")
    assert info["images"] == 8 and [s["file"] for s in info["skipped_corrupt"]] == [rel]
    assert "skipped 1 corrupt image(s)" in capfd.readouterr().err  # never silent
    good = json.loads((data[0] / "synthetic" / "ffcv" / "val.beton.json").read_text())
    assert info["inputs_sha256"] != good["inputs_sha256"]
    loader = make_loader("val", _cfg(root, backend="ffcv"), torch.device("cpu"))
    assert loader.skipped == [rel] and len(_epoch(loader)[1]) == 8


def test_corrupt_jpeg_fatal_when_asked(corrupt):
    root, bad = corrupt
    with pytest.raises(DataError, match=f"{bad.name}: corrupt image.*on_corrupt=skip"):
        convert_stage(
            {"root": str(root), "dataset": "synthetic", "on_corrupt": "fail", **TINY}, splits=("val",)
        )
    assert not (root / "synthetic" / "ffcv").exists() or not list((root / "synthetic" / "ffcv").iterdir())


@pytest.mark.parametrize("on_corrupt", ["skip", "fail"])
def test_corrupt_jpeg_torchvision_loader(corrupt, on_corrupt):
    root, bad = corrupt
    loader = make_loader("val", _cfg(root, backend="torchvision", on_corrupt=on_corrupt), torch.device("cpu"))
    if on_corrupt == "fail":
        with pytest.raises(DataError, match=f"{bad.name}: corrupt image"):
            _epoch(loader)
    else:
        assert len(_epoch(loader)[1]) == 8 and loader.skipped == [str(bad)]


def test_interrupted_conversion_leaves_no_finished_beton(data, tmp_path, monkeypatch):
    from ffcv.writer import DatasetWriter

    root, _ = data
    shutil.copytree(root / "synthetic", tmp_path / "synthetic")  # a finished conversion is already there
    out = tmp_path / "synthetic" / "ffcv"

    def killed(self, allocations):
        raise KeyboardInterrupt  # Ctrl-C while the file is being finished

    monkeypatch.setattr(DatasetWriter, "finalize", killed)
    with pytest.raises(KeyboardInterrupt):
        convert_stage({"root": str(tmp_path), "dataset": "synthetic", **TINY}, splits=("val",))
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # the half-written file is gone
    # the old pair is gone too: a runner sees missing outputs and reruns convert; loaders refuse to start
    assert not (out / "val.beton.json").exists() and not (out / "val.beton").exists()
    with pytest.raises(DataError, match="val.beton is missing or unfinished: run `dlwt convert"):
        make_loader("val", _cfg(tmp_path), torch.device("cpu"))
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):  # and from scratch: nothing under the final name
        monkeypatch.setattr(DatasetWriter, "finalize", killed)
        convert_stage({"root": str(tmp_path), "dataset": "synthetic", **TINY}, splits=("val",))
    assert sorted(p.name for p in out.iterdir()) == ["train.beton", "train.beton.json"]


def test_convert_needs_extract_first(tmp_path):
    with pytest.raises(DataError, match="classes.json is missing: run `dlwt extract` first"):
        convert_stage({"root": str(tmp_path), "dataset": "synthetic", **TINY})
