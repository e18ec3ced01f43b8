"""Data stage without FFCV: synthetic ILSVRC archives, acquire (md5, resumed download), extract, digits,
imagefolder checks. Every bad input must raise DataError naming the file and leave nothing finished-looking.

    pytest tests/test_data_archives.py -q
"""

import http.server
import json
import os
import shutil
import tarfile
import threading

import numpy as np
import pytest

from dlwt.data import DataError
from dlwt.data.imagefolder import link_tree, read_classes, scan
from dlwt.data.imagenet import ARCHIVES, acquire, extract, md5sum, read_devkit
from dlwt.data.synthetic import write_archives, write_devkit

TRAIN, VAL, DEVKIT = (name for name, _ in ARCHIVES.values())


@pytest.fixture
def raw(tmp_path):
    """3 classes x 4 train + 2 val images at 32 px in <tmp>/raw; returns (raw dir, root, record)."""
    rec = write_archives(
        str(tmp_path / "raw"), classes=3, train_per_class=4, val_per_class=2, size=32, seed=1
    )
    return tmp_path / "raw", tmp_path / "data", rec


def _reacquired(raw_dir, role):
    """Record a deliberately replaced archive's md5 in MD5SUMS.json, as acquiring that file would."""
    sums = json.loads((raw_dir / "MD5SUMS.json").read_text())
    sums[role] = md5sum(str(raw_dir / ARCHIVES[role][0]))
    (raw_dir / "MD5SUMS.json").write_text(json.dumps(sums))


def _no_output(root):
    """Nothing finished-looking: no images/ tree and no temp tree left behind."""
    ds = root / "synthetic"
    return not ds.exists() or not any(p.name.startswith("images") for p in ds.iterdir())


def test_extract_puts_every_image_under_its_true_class(raw):
    raw_dir, root, rec = raw
    out = extract(str(raw_dir), str(root), "synthetic")
    for split in ("train", "val"):
        found = {f: os.path.basename(d) for d, _, fs in os.walk(os.path.join(out, split)) for f in fs}
        assert found == rec[split]  # every file exactly once, in its generator-recorded class
    classes = read_classes(out)
    assert [c["wnid"] for c in classes] == sorted(c["wnid"] for c in rec["classes"])
    assert [c["index"] for c in classes] == [0, 1, 2]
    assert {c["wnid"]: c["name"] for c in classes} == {c["wnid"]: c["name"] for c in rec["classes"]}
    samples, _ = scan(out, "val")  # ImageFolder order: label = index of the sorted wnid
    assert all(classes[label]["wnid"] == rec["val"][os.path.basename(rel)] for rel, label in samples)
    assert not list(root.glob("synthetic/images.tmp-*"))


def test_meta_mat_reads_like_the_real_devkit(raw, tmp_path, monkeypatch):
    """torchvision's own ILSVRC devkit parser reads our devkit: meta.mat has the real struct fields."""
    import torch
    import torchvision.datasets.imagenet as tvi

    raw_dir, _, rec = raw
    monkeypatch.setattr(tvi, "_verify_archive", lambda *a: None)  # it checks the official md5
    tvi.parse_devkit_archive(str(raw_dir))
    wnid_to_classes, val_wnids = torch.load(raw_dir / "meta.bin", weights_only=True)
    assert wnid_to_classes == {c["wnid"]: (c["name"],) for c in rec["classes"]}  # parent node is no class
    assert val_wnids == [rec["val"][f"ILSVRC2012_val_{n:08d}.JPEG"] for n in range(1, 7)]
    by_id, names, counts, truth = read_devkit(str(raw_dir / DEVKIT))
    assert by_id == {c["id"]: c["wnid"] for c in rec["classes"]} and set(counts.values()) == {4}
    assert [by_id[i] for i in sorted(by_id)] != sorted(by_id.values())  # ID order != wnid order


def test_val_image_without_label_is_named(raw):
    raw_dir, root, rec = raw
    by_id, _, counts, truth = read_devkit(str(raw_dir / DEVKIT))
    synsets = [
        dict(
            ILSVRC2012_ID=i,
            WNID=w,
            words=w,
            gloss="",
            num_children=0,
            children=np.zeros(0),
            wordnet_height=0,
            num_train_images=counts[w],
        )
        for i, w in by_id.items()
    ]
    write_devkit(str(raw_dir / DEVKIT), synsets, truth[:-1])  # ground truth one line short
    _reacquired(raw_dir, "devkit")
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000006\.JPEG has no label"):
        extract(str(raw_dir), str(root), "synthetic")
    assert _no_output(root)


@pytest.mark.parametrize("cut", ["mid_member", "member_boundary"])
def test_truncated_train_tar(raw, cut):
    raw_dir, root, _ = raw
    path = raw_dir / TRAIN
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    # mid-member: tarfile fails reading; boundary: the tar reads cleanly, only its md5 catches it
    size = members[1].offset_data + 1000 if cut == "mid_member" else members[2].offset
    with open(path, "r+b") as f:
        f.truncate(size)
    with pytest.raises(DataError, match="ILSVRC2012_img_train.tar.*truncated"):
        extract(str(raw_dir), str(root), "synthetic")
    assert _no_output(root)


def test_truncated_val_tar(raw):
    raw_dir, root, _ = raw
    with tarfile.open(raw_dir / VAL) as tf:
        m = tf.getmembers()[3]
    with open(raw_dir / VAL, "r+b") as f:
        f.truncate(m.offset)  # clean cut: 3 of 6 images
    with pytest.raises(DataError, match="ILSVRC2012_img_val.tar: md5 .* truncated or damaged"):
        extract(str(raw_dir), str(root), "synthetic")
    assert _no_output(root)


def test_failed_extract_keeps_the_previous_tree(raw):
    raw_dir, root, _ = raw
    out = extract(str(raw_dir), str(root), "synthetic")
    with open(raw_dir / VAL, "r+b") as f:
        f.truncate(5000)
    with pytest.raises(DataError):
        extract(str(raw_dir), str(root), "synthetic")
    assert len(scan(out, "val")[0]) == 6 and not list(root.glob("synthetic/images.tmp-*"))


def test_acquire_checks_md5_and_names_missing_archives(raw, tmp_path):
    raw_dir, _, _ = raw
    sums = json.loads((raw_dir / "MD5SUMS.json").read_text())
    assert set(acquire(str(raw_dir), checksums=sums)) == {"train", "val", "devkit"}
    with open(raw_dir / VAL, "ab") as f:
        f.write(b"x")  # changed size: the .md5ok stamp no longer applies, the hash is recomputed
    with pytest.raises(DataError, match=f"{VAL}: md5 [0-9a-f]{{32}}, expected {sums['val']}"):
        acquire(str(raw_dir), checksums=sums)
    with pytest.raises(DataError, match=f"{tmp_path / 'empty' / TRAIN} is missing: put {TRAIN}"):
        acquire(str(tmp_path / "empty"))  # real ImageNet: no URL given, archives absent


class _RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves BLOBS[path]; honours Range like a real file server (206 + the tail) unless IGNORE_RANGE."""

    blobs, ranges, ignore_range = {}, [], False

    def do_GET(self):
        data = self.blobs[self.path]
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng[6:-1]) if rng and not self.ignore_range else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _RangeServer.blobs, _RangeServer.ranges, _RangeServer.ignore_range = {}, [], False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


@pytest.mark.parametrize("ignore_range", [False, True])
def test_download_resumes_and_renames_only_when_verified(raw, tmp_path, server, ignore_range):
    raw_dir, _, _ = raw
    httpd, base = server
    sums = {r: md5sum(str(raw_dir / name)) for r, (name, _) in ARCHIVES.items()}
    for name, _ in ARCHIVES.values():
        _RangeServer.blobs[f"/{name}"] = (raw_dir / name).read_bytes()
    _RangeServer.ignore_range = ignore_range
    dest = tmp_path / "dl"
    dest.mkdir()
    half = _RangeServer.blobs[f"/{TRAIN}"][:7000]
    (dest / f"{TRAIN}.part").write_bytes(half)  # an interrupted earlier download
    urls = {r: f"{base}/{name}" for r, (name, _) in ARCHIVES.items()}
    acquire(str(dest), urls=urls, checksums=sums)
    assert "bytes=7000-" in _RangeServer.ranges  # asked only for the rest
    for r, (name, _) in ARCHIVES.items():
        assert md5sum(str(dest / name)) == sums[r]  # a server ignoring Range still gives the right file
    assert not list(dest.glob("*.part"))


def test_download_with_wrong_md5_leaves_no_archive(raw, tmp_path, server):
    raw_dir, _, _ = raw
    httpd, base = server
    _RangeServer.blobs[f"/{DEVKIT}"] = b"not the devkit"
    dest = tmp_path / "dl"
    dest.mkdir()
    shutil.copy(raw_dir / TRAIN, dest)
    shutil.copy(raw_dir / VAL, dest)
    sums = {r: md5sum(str(raw_dir / name)) for r, (name, _) in ARCHIVES.items()}
    with pytest.raises(DataError, match=f"{DEVKIT} has md5 .*expected {sums['devkit']}"):
        acquire(str(dest), urls={"devkit": f"{base}/{DEVKIT}"}, checksums=sums)
    assert not (dest / DEVKIT).exists() and not (dest / f"{DEVKIT}.part").exists()


def test_digits_real_data_fixed_split(tmp_path):
    from PIL import Image

    from dlwt.data.digits import write_digits

    a = write_digits(str(tmp_path / "a"), size=16)
    counts = {s: len(scan(a, s)[0]) for s in ("train", "val")}
    assert counts["train"] + counts["val"] == 1797 and counts["val"] == 360
    classes = read_classes(a)
    assert [c["wnid"] for c in classes] == [str(d) for d in range(10)]  # class index == digit
    samples, _ = scan(a, "train")
    assert set(label for _, label in samples) == set(range(10))
    b = write_digits(str(tmp_path / "b"), size=16)
    assert scan(a, "val")[0] == scan(b, "val")[0]  # the split does not move between runs
    from sklearn.datasets import load_digits

    d = load_digits()
    rel, label = scan(a, "val")[0][0]
    i = int(os.path.basename(rel)[:4])
    img = np.asarray(Image.open(os.path.join(a, rel)))
    assert img.shape == (16, 16, 3) and label == d.target[i]
    assert np.array_equal(img[::2, ::2, 0], np.round(d.images[i] * 255 / 16).astype(np.uint8))  # real pixels


def _tree(root, spec):
    """spec: {split: {class: n images}} -> tiny PNG ImageFolder under root."""
    from PIL import Image

    for split, classes in spec.items():
        for c, n in classes.items():
            os.makedirs(root / split / c, exist_ok=True)
            for j in range(n):
                Image.new("RGB", (8, 8), (j, 0, 0)).save(root / split / c / f"{j}.png")
    return root


def test_imagefolder_source_links_a_valid_tree(tmp_path):
    src = _tree(tmp_path / "mine", {"train": {"b": 2, "a": 1}, "val": {"a": 1}})
    out = link_tree(str(src), str(tmp_path / "data"), "mine")
    assert [c["wnid"] for c in read_classes(out)] == ["a", "b"]
    assert scan(out, "val")[0] == [(os.path.join("val", "a", "0.png"), 0)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"train": {"a": 1, "b": 0}, "val": {"a": 1}}, r"train/b is an empty class folder"),
        ({"train": {"a": 1}, "val": {"a": 1, "z": 1}}, r"val/z: class 'z' is not in"),
        ({"train": {"a": 1}}, r"val is missing"),
    ],
)
def test_imagefolder_bad_trees(tmp_path, spec, message):
    src = _tree(tmp_path / "mine", spec)
    with pytest.raises(DataError, match=message):
        link_tree(str(src), str(tmp_path / "data"), "mine")
    assert not (tmp_path / "data").exists()


def test_cli_stages_run_the_functions(tmp_path):
    """`dlwt acquire/extract` as the CLI registers them: flags -> cfg -> the same functions."""
    import argparse

    from dlwt.data.stages import add_subparsers

    ap = argparse.ArgumentParser()
    add_subparsers(ap.add_subparsers(dest="cmd", required=True))
    for argv in (
        ["acquire", "--source", "synthetic", "--root", str(tmp_path), "--classes", "2", "--size", "16"],
        ["extract", "--source", "synthetic", "--root", str(tmp_path)],
    ):
        a = ap.parse_args(argv)
        a.func(a)
    assert [c["wnid"] for c in read_classes(str(tmp_path / "synthetic" / "images"))] == [
        "n10000000",
        "n10007919",
    ]
    a = ap.parse_args(["acquire", "--source", "imagenet", "--root", str(tmp_path), "--url", "train:http://x"])
    with pytest.raises(DataError, match="expected ROLE=URL"):
        a.func(a)


def test_download_stops_at_the_official_size(tmp_path, server):
    """A wrong URL serving a huge file cannot fill the disk: past the cap the download stops, .part deleted."""
    from dlwt.data.imagenet import download

    httpd, base = server
    _RangeServer.blobs["/big"] = b"x" * 5000
    with pytest.raises(DataError, match=r"would exceed its official size of 4096 bytes"):
        download(f"{base}/big", str(tmp_path / DEVKIT), "0" * 32, cap=4096)
    assert not list(tmp_path.iterdir())
