"""The data stages against a user's mistakes and a broken disk (issue 18): nothing of the user's deleted,
no leftovers a rerun keeps, one line (exit 2) instead of a traceback. In-process CLI (`dlwt.cli.main`)
wherever a separate process is not the point; FFCV-free except the two writer-failure cases.

    pytest -q tests/test_data_faults.py
"""
import json
import os
import re
import subprocess
import sys
import urllib.error

import pytest

from dlwt.atomic import _HOST
from dlwt.cli import main
from dlwt.data import DataError
from test_data_sources import cifar_archive, fake_fm  # noqa: F401  (fake_fm is a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """tmp_path as the working folder, with the repository's params.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(open(os.path.join(REPO, "params.yaml")).read())
    return tmp_path


def one_line(capsys, rc, pattern):
    """Exit 2 and exactly one stderr line `dlwt <stage>: ...` matching pattern; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("dlwt ") and re.search(pattern, err[-1]), err
    assert not any("Traceback" in e for e in err), err
    return err[-1]


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def image_tree(root, classes=("a", "b"), per_class=2):
    """root/{train,val}/<class>/<n>.png, 8x8."""
    from PIL import Image

    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", (8, 8), (40 * j, 0, 0)).save(root / split / c / f"{j}.png")
    return root


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --- 18.1: an imagefolder source linked into the output it would replace ------------------------------

@pytest.mark.parametrize("level", ["split", "class", "image"])
def test_imagefolder_linked_into_the_output_keeps_the_users_images(work, capsys, level):
    """mine/<train|val> (or a class folder, or one image) a symlink into data/mine/images: refused before
    anything is removed; the images extract would have replaced are all still there."""
    from dlwt.data.imagefolder import write_classes

    images = work / "data" / "mine" / "images"
    image_tree(images)
    write_classes(str(images), ["a", "b"])
    before = files(images)
    mine = work / "mine"
    if level == "split":
        mine.mkdir()
        for split in ("train", "val"):
            os.symlink(images / split, mine / split)
    else:
        image_tree(mine, classes=("a",))
        if level == "class":
            os.symlink(images / "train" / "b", mine / "train" / "b")
        else:
            os.symlink(images / "val" / "a" / "0.png", mine / "val" / "a" / "9.png")
    rc = main(["extract", "--source", "imagefolder", "--imagefolder", "mine", "--dataset", "mine", "--root", "data"])
    one_line(capsys, rc, r"data.imagefolder: .*mine/(train|val).* resolves to .*overlaps data/mine .*keep your tree")
    assert files(images) == before
    assert not (images / "train").is_symlink() and sorted(os.listdir(work / "data" / "mine")) == ["images"]


def test_imagefolder_split_holding_the_output_is_refused(work, capsys):
    image_tree(work / "mine")
    os.rename(work / "mine" / "train", work / "real_train")
    (work / "data").mkdir()
    os.symlink(work / "data", work / "mine" / "train")  # train/ -> the whole data root
    rc = main(["extract", "--source", "imagefolder", "--imagefolder", "mine", "--dataset", "mine", "--root", "data"])
    one_line(capsys, rc, r"mine/train resolves to .*data, which overlaps data/mine")
    assert os.listdir(work / "data") == []


def test_imagefolder_links_outside_the_output_are_fine(work):
    """The check refuses only what overlaps: a tree of links to elsewhere still extracts."""
    image_tree(work / "store")
    (work / "mine").mkdir()
    for split in ("train", "val"):
        os.symlink(work / "store" / split, work / "mine" / split)
    assert main(["extract", "--source", "imagefolder", "--imagefolder", "mine", "--dataset", "mine",
                 "--root", "data"]) == 0
    assert files(work / "data" / "mine" / "images") == ["classes.json"]  # train/val are links, not walked
    assert (work / "data" / "mine" / "images" / "train" / "a" / "0.png").exists()


# --- 18.9: every extract removes the temps of killed runs -----------------------------------------------

@pytest.mark.parametrize("source", ["digits", "fashion-mnist", "cifar10", "imagefolder"])
def test_every_extract_removes_the_temps_of_killed_runs(work, fake_fm, source):  # noqa: F811
    fm_dir, fm_sums = fake_fm
    ds = work / "data" / "ds"
    pid = dead_pid()
    leftovers = [ds / f"images.old-{pid}-{_HOST}", ds / f"images.tmp-{pid}-{_HOST}"]
    for d in leftovers:
        image_tree(d, classes=("x",), per_class=1)  # what kill -9 of an extract leaves: a whole tree
    live = ds / f"images.tmp-{pid}-otherhost"  # another node's (a shared folder): not ours to judge
    live.mkdir()
    if source == "digits":
        from dlwt.data.digits import write_digits

        write_digits(str(work / "data"), "ds", size=8)
    elif source == "fashion-mnist":
        from dlwt.data.fashion_mnist import write_fashion_mnist

        write_fashion_mnist(str(work / "data"), "ds", str(fm_dir), train_per_class=1, val_per_class=1,
                            checksums=fm_sums)
    elif source == "cifar10":
        from dlwt.data.cifar import write_cifar

        (work / "raw").mkdir()
        sums = cifar_archive(work / "raw", "cifar10", per_class=1)
        write_cifar("cifar10", str(work / "raw"), str(work / "data"), "ds", checksums=sums)
        assert sorted(os.listdir(work / "raw")) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    else:
        image_tree(work / "mine")
        assert main(["extract", "--source", "imagefolder", "--imagefolder", "mine", "--dataset", "ds",
                     "--root", "data"]) == 0
    assert not any(d.exists() for d in leftovers) and live.exists()
    assert sorted(os.listdir(ds)) == ["images", live.name]
    assert json.loads((ds / "images" / "classes.json").read_text())


# --- 18 one-line errors ---------------------------------------------------------------------------------

def _fm_overlay(work, fm_dir, **extra):
    (work / "fm.yaml").write_text(json.dumps({"data": {"source": "fashion-mnist", "dataset": "fm", "root": "data",
                                                       "fashion_mnist": {"dir": str(fm_dir), **extra}}}))
    return ["--params", "params.yaml", "--overlay", "fm.yaml"]


def test_fashion_mnist_gz_with_one_corrupt_byte_is_one_line(work, capsys, fake_fm):  # noqa: F811
    fm_dir, _ = fake_fm
    gz = fm_dir / "train-images-idx3-ubyte.gz"
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: zlib.error (or a CRC error)
    gz.write_bytes(bytes(data))
    rc = main(["acquire", *_fm_overlay(work, fm_dir)])
    one_line(capsys, rc, r"dlwt acquire: .*train-images-idx3-ubyte.gz: unreadable \((error|BadGzipFile).*\); "
                         r"replace it: install it")


def test_fashion_mnist_extract_prints_progress(work, capfd, fake_fm):  # noqa: F811
    from dlwt.data.fashion_mnist import write_fashion_mnist

    fm_dir, sums = fake_fm
    write_fashion_mnist(str(work / "data"), "fm", str(fm_dir), checksums=sums)
    err = capfd.readouterr().err
    assert re.search(r"fashion-mnist train: 30/30 \(100%\)", err) and "fashion-mnist val: 20/20 (100%)" in err


def test_cifar_download_offline_is_one_line(work, capsys, monkeypatch):
    import torchvision.datasets.utils

    def offline(url, root, filename, md5):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    (work / "c.yaml").write_text("data: {source: cifar10, dataset: cifar10, root: data, cifar: {download: true}}\n")
    rc = main(["acquire", "--params", "params.yaml", "--overlay", "c.yaml"])
    one_line(capsys, rc, r"dlwt acquire: https://www.cs.toronto.edu/.*cifar-10-python.tar.gz: download failed "
                         r"\(.*name resolution\); check the network")
    assert not (work / "data" / "cifar10").exists()


def test_cifar_corrupt_archive_is_one_line(work, capsys):
    (work / "raw").mkdir()
    sums = cifar_archive(work / "raw", "cifar10", per_class=1)
    from dlwt.data import cifar

    arc = work / "raw" / "cifar-10-python.tar.gz"
    data = bytearray(arc.read_bytes())
    data[10] ^= 0xFF  # the first deflate block's header (right after gzip's 10-byte header): zlib.error
    arc.write_bytes(bytes(data))
    sums["cifar-10-python.tar.gz"] = __import__("hashlib").md5(bytes(data)).hexdigest()  # md5 passes, tar fails
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: unreadable archive \(.*\); delete it") as e:
        cifar.acquire("cifar10", str(work / "raw"), checksums=sums)
    assert "\n" not in str(e.value) and sorted(os.listdir(work / "raw")) == ["cifar-10-python.tar.gz"]


def test_dataset_symlink_loop_is_one_line(work, capsys):
    (work / "data").mkdir()
    os.symlink("loop", work / "data" / "loop")
    rc = main(["acquire", "--source", "synthetic", "--dataset", "loop", "--root", "data"])
    one_line(capsys, rc, r"dlwt acquire: symlink loop at data/loop: fix or remove that link")


def test_truncated_classes_json_is_one_line(work, capsys):
    images = work / "data" / "mine" / "images"
    image_tree(images)
    (images / "classes.json").write_text('[{"index": 0, "wnid": "a", "na')
    rc = main(["convert", "--dataset", "mine", "--root", "data"])
    one_line(capsys, rc, r"dlwt convert: data/mine/images/classes.json: not a readable classes list .*rerun "
                         r"`dlwt extract`")
    assert not (work / "data" / "mine" / "ffcv").exists()


@pytest.fixture
def converted(work):
    """data/mine/images (2 classes) and what convert leaves for val: a .beton and its sidecar (the bytes are
    not FFCV's: make_loader's checks come before FFCV opens the file)."""
    from dlwt.data.imagefolder import write_classes

    images = work / "data" / "mine" / "images"
    image_tree(images)
    write_classes(str(images), ["a", "b"])
    ffcv = work / "data" / "mine" / "ffcv"
    ffcv.mkdir()
    (ffcv / "val.beton").write_bytes(b"\0" * 1000)
    (ffcv / "val.beton.json").write_text(json.dumps({"bytes": 1000, "images": 4, "per_class": {"a": 2, "b": 2},
                                                     "skipped_corrupt": []}))
    return work


def _loader(work):
    from dlwt.data.loaders import make_loader

    return make_loader("val", {"root": "data", "dataset": "mine", "backend": "ffcv", "num_workers": 1})


def test_truncated_beton_with_its_sidecar_is_one_line(converted):
    beton = converted / "data" / "mine" / "ffcv" / "val.beton"
    beton.write_bytes(beton.read_bytes()[:600])  # a copy cut short; the sidecar still says 1000
    with pytest.raises(DataError, match=r"data/mine/ffcv/val.beton: 600 bytes, its sidecar says 1000: the file is "
                                        r"truncated .*run `dlwt convert --dataset mine` again") as e:
        _loader(converted)
    assert "\n" not in str(e.value)


def test_beton_older_than_classes_json_is_one_line(converted):
    from dlwt.data.imagefolder import write_classes

    images = converted / "data" / "mine" / "images"
    image_tree(images, classes=("a", "b", "c"))
    write_classes(str(images), ["a", "b", "c"])  # extracted again with one more class; not converted since
    with pytest.raises(DataError, match=r"val.beton was converted with 2 classes that differ from "
                                        r"data/mine/images/classes.json \(3\).*run `dlwt convert --dataset mine`"):
        _loader(converted)


def test_sidecar_that_is_not_one_is_one_line(converted):
    (converted / "data" / "mine" / "ffcv" / "val.beton.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"val.beton.json: not a convert sidecar"):
        _loader(converted)


# --- 18.6 and 16.9: FFCV's writer (these import FFCV) ---------------------------------------------------

@pytest.fixture
def tree(work):
    """A tiny extracted tree for convert (2 classes x 2 images per split, 8 px)."""
    from dlwt.data.imagefolder import write_classes

    images = work / "data" / "mine" / "images"
    image_tree(images)
    write_classes(str(images), ["a", "b"])
    return work


CONVERT = ["convert", "--dataset", "mine", "--root", "data", "--max-resolution", "8", "--page-size", str(1 << 21),
           "--num-workers", "1", "--split", "val"]


@pytest.mark.parametrize("how", ["disk full", "killed"])
def test_convert_stops_when_a_writer_worker_dies(tree, capsys, monkeypatch, how):
    """FFCV's worker dies (ENOSPC writing a page; the OOM killer): one line, no temp file, no beton, and no
    wait (FFCV's own writer waits for ever). The stand-ins are inherited by the forked worker."""
    import errno
    import signal

    import ffcv.memory_allocator
    import ffcv.writer

    if how == "disk full":
        def full(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(ffcv.memory_allocator.MemoryAllocator, "flush_page", full)
        pattern = r"disk full writing data/mine/ffcv/val.beton \(disk mounted at /.*\): free space there"
    else:
        def killed(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        monkeypatch.setattr(ffcv.writer, "worker_job_indexed_dataset", killed)
        pattern = r"data/mine/ffcv/val.beton: FFCV's writer worker \(pid \d+\) failed: killed by SIGKILL"
    rc = main(CONVERT)
    one_line(capsys, rc, pattern)
    assert os.listdir(tree / "data" / "mine" / "ffcv") == []


def test_convert_exits_under_a_one_cpu_affinity_mask(tree):
    """Under a one-CPU mask numba's TBB layer hung the process at exit after FFCV's writer forked (issue 16.9):
    convert must write both files and exit. A subprocess, since the hang is at interpreter exit."""
    code = ("import os, sys; os.sched_setaffinity(0, {0}); from dlwt.cli import main; "
            f"sys.exit(main({CONVERT!r}))")
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    env.pop("NUMBA_THREADING_LAYER", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tree / "data" / "mine" / "ffcv")) == ["val.beton", "val.beton.json"]

