"""Fashion-MNIST and CIFAR sources: files found and MD5-checked, a missing or wrong file is one line saying how
to get it, extract writes the ImageFolder tree every later stage reads. Offline: small idx files / CIFAR
archives made here in the exact formats (the real Fashion-MNIST is read too where Debian's package is installed).

    MPLBACKEND=Agg .venv/bin/pytest -q tests/test_data_sources.py
"""
import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from dlwt.data import DataError
from dlwt.data import fashion_mnist as fm
from dlwt.data.stages import acquire_stage, extract_stage


def idx_bytes(a: np.ndarray) -> bytes:
    """The idx format: 0x0000, type 0x08 (ubyte), ndim, big-endian dims, data."""
    head = b"\x00\x00\x08" + bytes([a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fm(tmp_path):
    """Tiny Fashion-MNIST idx files (train: 3 per class, test: 2 per class), gzipped like Debian's, with
    each image's pixels = its index so the test can tell them apart; returns (dir, checksums)."""
    rng = np.random.default_rng(0)
    d, sums = tmp_path / "fm", {}
    d.mkdir()
    for prefix, per in (("train", 3), ("t10k", 2)):
        labels = rng.permutation(np.repeat(np.arange(10), per))
        images = np.stack([np.full((28, 28), i, np.uint8) for i in range(len(labels))])
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            sums[f"{prefix}-{kind}"] = hashlib.md5(raw).hexdigest()
            (d / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(raw))
    return d, sums


def test_fashion_mnist_tree_has_the_right_labels_and_subset(tmp_path, fake_fm):
    d, sums = fake_fm
    out = fm.write_fashion_mnist(tmp_path / "data", "fm", str(d), train_per_class=2, checksums=sums)
    labels = fm.read_idx(str(d / "train-labels-idx1-ubyte.gz"))
    classes = json.loads((tmp_path / "data" / "fm" / "images" / "classes.json").read_text())
    assert [c["name"] for c in classes][:2] == ["T-shirt/top", "Trouser"] and len(classes) == 10
    for c in range(10):
        train = sorted(os.listdir(os.path.join(out, "train", str(c))))
        # the first two images of class c in file order, named by their index in the idx file
        assert train == [f"{i:05d}.png" for i in np.flatnonzero(labels == c)[:2]]
        assert len(os.listdir(os.path.join(out, "val", str(c)))) == 2  # val_per_class None: all
    from PIL import Image
    name = sorted(os.listdir(os.path.join(out, "train", "3")))[0]
    with Image.open(os.path.join(out, "train", "3", name)) as im:
        assert im.size == (28, 28) and im.mode == "RGB"
        assert np.asarray(im)[0, 0, 0] == int(name[:5])  # pixels are the image's index: the right image


def test_fashion_mnist_missing_or_wrong_file_is_one_line(tmp_path, fake_fm):
    d, sums = fake_fm
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] is missing: install it with "
                                        r"`apt-get install dataset-fashion-mnist`") as e:
        fm.find(str(d), sums)
    assert "\n" not in str(e.value)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: decompressed MD5 [0-9a-f]{32}, expected"):
        fm.find(str(d), sums)
    # the real checksums refuse the fake files (and an empty folder names the first file)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: decompressed MD5"):
        fm.find(str(d))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        acquire_stage({"dataset": "fm", "source": "fashion-mnist", "root": str(tmp_path / "data"),
                       "fashion_mnist": {"dir": str(tmp_path)}})


@pytest.mark.skipif(not os.path.isdir(fm.DEFAULT_DIR), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_through_the_stages(tmp_path):
    cfg = {"dataset": "fm", "source": "fashion-mnist", "root": str(tmp_path / "data"),
           "fashion_mnist": {"train_per_class": 5, "val_per_class": 3}}
    found = acquire_stage(cfg)
    assert set(found) == set(fm.FILES)
    out = extract_stage(cfg)
    assert sum(len(os.listdir(os.path.join(out, "train", str(c)))) for c in range(10)) == 50
    assert sum(len(os.listdir(os.path.join(out, "val", str(c)))) for c in range(10)) == 30
    # the first training image of the real set is an ankle boot (class 9), the first test image too
    assert "00000.png" in os.listdir(os.path.join(out, "train", "9"))
    assert "00000.png" in os.listdir(os.path.join(out, "val", "9"))


def cifar_archive(directory, source, per_class=2, classes=None):
    """A small archive in the exact cifar-10-python.tar.gz / cifar-100-python.tar.gz layout (Python-2-style
    pickles of dicts with 'data' N x 3072 uint8 rows and 'labels' / 'fine_labels'); returns its checksums."""
    import io
    import pickle
    import tarfile

    from dlwt.data.cifar import spec

    s = spec(source)
    n_cls = classes or (10 if source == "cifar10" else 100)
    label_key = "labels" if source == "cifar10" else "fine_labels"
    files, rng = {}, np.random.default_rng(0)
    for i, name in enumerate(s["train"] + s["test"]):
        labels = [c for c in range(n_cls) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, 0] = i  # first red pixel = the batch's number
        files[name] = pickle.dumps({"data": data, label_key: labels, "batch_label": name}, protocol=2)
    names = [f"class{c}" for c in range(n_cls)]
    files[s["meta"]] = pickle.dumps({s["names_key"]: names}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{s['folder']}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (directory / s["archive"]).write_bytes(buf.getvalue())
    sums = {name: hashlib.md5(data).hexdigest() for name, data in files.items()}
    return {**sums, s["archive"]: hashlib.md5(buf.getvalue()).hexdigest()}


@pytest.mark.parametrize("source, n_cls, train_files", [("cifar10", 10, 5), ("cifar100", 100, 1)])
def test_cifar_archive_to_image_tree(tmp_path, source, n_cls, train_files):
    from dlwt.data import cifar

    sums = cifar_archive(tmp_path, source)
    assert os.path.isdir(cifar.acquire(source, str(tmp_path), checksums=sums)["batches"])
    out = cifar.write_cifar(source, str(tmp_path), str(tmp_path / "data"), source, checksums=sums)
    classes = json.loads((tmp_path / "data" / source / "images" / "classes.json").read_text())
    assert len(classes) == n_cls and classes[1]["name"] == "class1"
    first = classes[0]["wnid"]
    assert len(os.listdir(os.path.join(out, "train", first))) == 2 * train_files
    assert len(os.listdir(os.path.join(out, "val", first))) == 2
    from PIL import Image
    with Image.open(os.path.join(out, "val", first, "00000.png")) as im:
        assert im.size == (32, 32) and np.asarray(im)[0, 0, 0] == train_files  # the test batch's marker


def test_cifar_missing_or_wrong_archive_is_one_line(tmp_path):
    from dlwt.data import cifar

    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz not found: set data\.cifar\.download: true"):
        cifar.acquire("cifar10", str(tmp_path))
    cifar_archive(tmp_path, "cifar10")  # the real MD5s refuse a generated archive
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: MD5 [0-9a-f]{32}, expected "
                                        r"c58f30108f718f92721af3b95e74349a"):
        acquire_stage({"dataset": "c", "source": "cifar10", "root": str(tmp_path / "data"),
                       "cifar": {"dir": str(tmp_path)}})
