"""Fault injection: what a user's mistake, a hostile file or a broken disk does to the pipeline (issue 10).

    pytest tests/test_faults.py -q

Each case runs the CLI as a user would (`dlwt ...`, on tiny synthetic data) and asserts the exit code, the one
line on stderr, and what is (and is not) left on disk. The CLI is called in-process (conftest's `cli`: the same
`dlwt.cli.main` that `python -m dlwt` runs, without a 5-10 s torch-importing process start per call); one case
runs `python -m dlwt` itself, for the process's exit code and stderr. The synthetic data is made once per test
run and copied per test. Data-loss and code-execution cases first. Cases on a full or read-only disk mount a
tiny tmpfs and are skipped where mounting is not allowed.
"""
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, copy_tree

pytestmark = pytest.mark.timeout(300)


def fails_with(r, pattern):
    """Exit 2, no traceback, and the last stderr line is `dlwt <stage>: ...` matching pattern."""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1].split("\r")[-1]
    assert line.startswith("dlwt ") and re.search(pattern, line), line
    assert "0x" not in line  # no object reprs with memory addresses
    return line


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def work(tmp_path):
    """A scratch checkout-like folder: params.yaml, a README and a tracked paper/ file."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "README.md").write_text("my readme\n")
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "published.yaml").write_text("keep: me\n")
    return tmp_path


@pytest.fixture
def synthetic(work, synthetic_tree):
    """Synthetic archives acquired and extracted under work/data (3 classes, 32 px): a copy of the session's."""
    copy_tree(synthetic_tree / "data", work / "data")
    return work


def overlay(work, name, text):
    (work / name).write_text(text)
    return name


EVAL_OVERLAY = """
data: {source: synthetic, dataset: synthetic, root: data, backend: torchvision, batch_size: 4, res: 32,
       val_res: 32, crop_ratio: 1.0, num_workers: 0}
model: {stem: small}
train: {grad_batch: 4, device: cpu}
"""


def evaluate(cli, work, *args, over="eval.yaml"):
    if not (work / over).exists():
        overlay(work, over, EVAL_OVERLAY)
    return cli("evaluate", "--params", "params.yaml", "--overlay", over, "--arch", "resnet18", *args, cwd=work)


class _Marker:
    """Unpickling this writes a marker file: what a crafted checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


# --- data loss ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("exp", ["..", ".", "../x", "/tmp/x"])
def test_exp_that_is_not_a_folder_name_stops_before_any_write(cli, work, exp):
    bad = overlay(work, "bad.yaml", f"exp: {exp!r}\n")
    before = files(work)
    r = cli("report", "--params", "params.yaml", "--overlay", bad, cwd=work)
    fails_with(r, r"exp")
    assert files(work) == before and (work / "README.md").read_text() == "my readme\n"


def test_python_m_dlwt_exits_2_with_the_one_line_and_no_traceback(work):
    """The process a user runs (`python -m dlwt`, the `dlwt` script's code): every other case calls the same
    main() in-process, so this one checks what reaches the shell, exit status and stderr."""
    bad = overlay(work, "bad.yaml", "exp: '..'\n")
    before = files(work)
    r = subprocess.run([sys.executable, "-m", "dlwt", "report", "--params", "params.yaml", "--overlay", bad],
                       cwd=work, capture_output=True, text=True, timeout=240)
    assert fails_with(r, r"exp") == r.stderr.strip()  # the only line
    assert files(work) == before


@pytest.mark.parametrize("how", ["flag", "params"])
def test_dataset_dotdot_writes_nothing_outside_the_data_root(cli, work, how):
    bad = overlay(work, "bad.yaml", "data: {source: synthetic, dataset: '..', root: data}\n")
    before = files(work)
    if how == "flag":
        r = cli("acquire", "--source", "synthetic", "--dataset", "..", "--root", "data", cwd=work)
    else:
        r = cli("acquire", "--params", "params.yaml", "--overlay", bad, cwd=work)
    fails_with(r, r"dataset")
    assert files(work) == before and not (work / "data").exists()


def test_dataset_folder_that_leaves_the_data_root_is_refused(cli, work, tmp_path):
    """data/<dataset> a symlink out of data.root: the stages would replace folders there; refused."""
    outside = tmp_path / "outside"
    (outside / "images").mkdir(parents=True)
    (outside / "images" / "mine.txt").write_text("keep")
    (work / "data").mkdir()
    os.symlink(outside, work / "data" / "synthetic")
    r = cli("acquire", "--source", "synthetic", "--dataset", "synthetic", "--root", "data", cwd=work)
    fails_with(r, r"data.dataset: data/synthetic resolves to .*outside, outside .*data; refusing")
    assert files(outside) == ["images/mine.txt"] and not (work / "data" / "raw").exists()


def test_imagefolder_overlapping_the_output_is_refused_and_keeps_the_images(cli, synthetic):
    images = synthetic / "data" / "synthetic" / "images"
    before = files(images)
    r = cli("extract", "--source", "imagefolder", "--imagefolder", images, "--dataset", "synthetic",
             "--root", "data", cwd=synthetic)
    fails_with(r, r"overlaps .*synthetic")
    assert files(images) == before and not (images / "train").is_symlink()


def test_devkit_wnids_cannot_write_outside_the_data_root(cli, synthetic, tmp_path):
    from dlwt.data.imagenet import read_devkit
    from dlwt.data.synthetic import write_devkit

    raw = synthetic / "data" / "raw" / "synthetic"
    devkit = raw / "ILSVRC2012_devkit_t12.tar.gz"
    by_id, _, counts, truth = read_devkit(str(devkit))
    evil = {w: e for w, e in zip(sorted(counts), ["../../../escaped", str(tmp_path / "abs"), "n0"])}
    write_devkit(str(devkit), [dict(ILSVRC2012_ID=i, WNID=evil[w], words=w, gloss="", num_children=0,
                                    children=[], wordnet_height=0, num_train_images=counts[w])
                               for i, w in by_id.items()], truth)
    sums = json.loads((raw / "MD5SUMS.json").read_text())
    from dlwt.data.imagenet import md5sum
    (raw / "MD5SUMS.json").write_text(json.dumps({**sums, "devkit": md5sum(str(devkit))}))
    before = files(tmp_path)
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", "data", cwd=synthetic)
    fails_with(r, r"meta.mat WNID='\.\./\.\./\.\./escaped' is not a plain folder name")
    assert files(tmp_path) == before  # the earlier tree is kept, nothing new anywhere


# --- code execution -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_crafted_checkpoint_runs_no_code_in_evaluate(cli, synthetic, fmt):
    marker, evil = synthetic / "MARKER", synthetic / "evil.pt"
    obj = {"arch": "resnet18", "rule": "bp", "seed": 0, "epoch": 1, "model": _Marker(marker)}
    if fmt == "torch.save":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj))
    r = evaluate(cli, synthetic, "--rule", "bp", "--checkpoint", evil, "--out", "e.json")
    fails_with(r, r"evil.pt: refused to load: it names Python objects .* which could run code")
    assert not marker.exists() and not (synthetic / "e.json").exists()


def test_crafted_last_pt_runs_no_code_in_train(cli, synthetic):
    marker = synthetic / "MARKER"
    run = synthetic / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"arch": "resnet18", "rule": "bp", "seed": 0, "epoch": 1, "model": _Marker(marker)},
               run / "checkpoints" / "last.pt")
    r = cli("train", "--params", "params.yaml", "--overlay", overlay(synthetic, "eval.yaml", EVAL_OVERLAY),
             "--arch", "resnet18", "--rule", "bp", "--out", run, cwd=synthetic)
    fails_with(r, r"last.pt: (refused to load|not a readable)")
    assert not marker.exists() and not (run / "checkpoints" / "final.pt").exists()


# --- checkpoints that are not what they claim ---------------------------------------------------------

def _state(stem="small", arch="resnet18", classes=3):
    import dlwt

    return dlwt.models.build(arch, classes, "bp", stem).state_dict()


@pytest.mark.parametrize("case, pattern", [
    ("empty", r"empty file \(0 bytes"),
    ("truncated", r"not a readable torch file \(truncated"),
    ("text", r"not a readable torch file"),
    ("list", r"neither a dlwt checkpoint nor a state dict"),
    ("missing", r"no such checkpoint file; run `dlwt train`"),
])
def test_unreadable_checkpoint_is_one_line(cli, synthetic, case, pattern):
    path = synthetic / f"{case}.pt"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        torch.save(_state(), path)
        path.write_bytes(path.read_bytes()[:100_000])
    elif case == "text":
        path.write_text("hello\n")
    elif case == "list":
        torch.save([1, 2], path)
    r = evaluate(cli, synthetic, "--rule", "bp", "--checkpoint", path, "--out", "e.json")
    fails_with(r, re.escape(str(path.name)) + ": " + pattern)
    assert not (synthetic / "e.json").exists()


@pytest.mark.parametrize("case, pattern", [
    ("imagenet stem", r"weights do not fit resnet18 \(small stem.*size mismatch for conv1.weight"),
    ("resnet50", r"weights do not fit resnet18"),
    ("1000 classes", r"weights do not fit .*size mismatch for fc.weight"),
    ("other rule", r"holds resnet18-kp-s0, not resnet18-bp-s0"),
])
def test_weights_of_another_model_are_one_line(cli, synthetic, case, pattern):
    path = synthetic / "w.pt"
    if case == "other rule":
        torch.save({"arch": "resnet18", "rule": "kp", "seed": 0, "epoch": 1, "model": _state()}, path)
    else:
        torch.save(_state(stem="imagenet" if case == "imagenet stem" else "small",
                          arch="resnet50" if case == "resnet50" else "resnet18",
                          classes=1000 if case == "1000 classes" else 3), path)
    r = evaluate(cli, synthetic, "--rule", "bp", "--checkpoint", path, "--out", "e.json")
    fails_with(r, pattern)
    assert not (synthetic / "e.json").exists()


# --- evaluate any weights (issue 13 item 7) -----------------------------------------------------------

@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_plain_state_dict_evaluates(cli, synthetic, rule):
    torch.save(_state(), synthetic / "mine.pt")  # what `torch.save(model.state_dict(), f)` writes
    r = evaluate(cli, synthetic, "--rule", rule, "--checkpoint", "mine.pt", "--out", "e.json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads((synthetic / "e.json").read_text())
    assert out["val_images"] == 6 and out["epoch"] is None and out["checkpoint"] == "mine.pt"


def test_torchvision_weights_evaluate_offline_from_the_cache(work, tmp_path, monkeypatch):
    """--weights torchvision reads $TORCH_HOME's cache (here: a state dict the test writes, 1000 classes,
    imagenet stem) and records torchvision's published top-1; nothing is downloaded. In-process: the file's
    published hash is made the test file's own (a real cached file has torchvision's)."""
    import hashlib

    from PIL import Image

    from dlwt import evaluate
    from dlwt.cli import main
    from dlwt.data.imagefolder import write_classes

    images = work / "data" / "tv" / "images"
    wnids = [f"n{k:08d}" for k in range(1000)]
    for split in ("train", "val"):
        for w in wnids:
            (images / split / w).mkdir(parents=True)
            Image.new("RGB", (8, 8), (int(w[-3:]) % 256, 0, 0)).save(images / split / w / "0.png")
    write_classes(str(images), wnids)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(_state(stem="imagenet", classes=1000), cache / "resnet18-f37072fd.pth")
    digest = hashlib.sha256((cache / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
    monkeypatch.setattr(evaluate, "published_sha256", lambda name: digest[:8])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.chdir(work)
    over = overlay(work, "tv.yaml", """
data: {source: imagefolder, dataset: tv, root: data, backend: torchvision, batch_size: 250, res: 8, val_res: 8,
       crop_ratio: 1.0, num_workers: 0}
model: {stem: imagenet}
train: {grad_batch: 4, device: cpu}
""")
    assert main(["evaluate", "--params", "params.yaml", "--overlay", over, "--arch", "resnet18", "--rule", "bp",
                 "--weights", "torchvision", "--out", "tv.json"]) == 0
    out = json.loads((work / "tv.json").read_text())
    assert out["published_top1"] == 69.758 and out["weights"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert out["val_images"] == 1000


# --- integrity ----------------------------------------------------------------------------------------

def test_archive_damaged_after_acquire_is_caught_by_extract(cli, synthetic):
    """Same size, same mtime, one byte flipped: acquire's stamp still matches, extract's md5 does not."""
    raw = synthetic / "data" / "raw" / "synthetic"
    val = raw / "ILSVRC2012_img_val.tar"
    st = val.stat()
    data = bytearray(val.read_bytes())
    data[len(data) // 2] ^= 0xFF
    val.write_bytes(bytes(data))
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli("acquire", "--source", "synthetic", "--dataset", "synthetic", "--root", "data",
                "--classes", 3, "--train-per-class", 4, "--val-per-class", 2, "--size", 32,
                cwd=synthetic).returncode == 0  # rewrites the synthetic archives: damage them again
    val.write_bytes(bytes(data))
    os.utime(val, ns=(st.st_atime_ns, st.st_mtime_ns))
    images = synthetic / "data" / "synthetic" / "images"
    before = files(images)
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", "data", cwd=synthetic)
    fails_with(r, r"ILSVRC2012_img_val.tar: md5 [0-9a-f]{32}, expected [0-9a-f]{32}; the file is truncated or damaged")
    assert files(images) == before  # the previous tree is kept, no temp tree left
    assert sorted(p.name for p in images.parent.iterdir()) == ["acquired.json", "images"]


def test_extra_ground_truth_line_blames_the_devkit_not_the_val_tar(cli, synthetic):
    from dlwt.data.imagenet import md5sum, read_devkit
    from dlwt.data.synthetic import write_devkit

    raw = synthetic / "data" / "raw" / "synthetic"
    devkit = raw / "ILSVRC2012_devkit_t12.tar.gz"
    by_id, _, counts, truth = read_devkit(str(devkit))
    write_devkit(str(devkit), [dict(ILSVRC2012_ID=i, WNID=w, words=w, gloss="", num_children=0, children=[],
                                    wordnet_height=0, num_train_images=counts[w]) for i, w in by_id.items()],
                 truth + truth[:1])
    sums = json.loads((raw / "MD5SUMS.json").read_text())
    (raw / "MD5SUMS.json").write_text(json.dumps({**sums, "devkit": md5sum(str(devkit))}))
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", "data", cwd=synthetic)
    line = fails_with(r, r"6 images \(the archive is intact: md5\), the devkit's ground truth lists 7; "
                         r"the devkit does not match this val tar")
    assert "delete it" not in line


# --- temp files ---------------------------------------------------------------------------------------

def test_temp_files_of_dead_writers_are_removed_at_stage_start(cli, synthetic, request):
    from dlwt import atomic

    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = ended.pid  # a writer that has exited
    writer = subprocess.Popen(["sleep", "300"])  # a writer still running (not this process: the stage runs here)
    request.addfinalizer(lambda: (writer.kill(), writer.wait()))
    host = atomic.tag().split("-", 1)[1]
    ds = synthetic / "data" / "synthetic"
    leftovers = [ds / f"images.tmp-{dead}-{host}", ds / f"images.old-{dead}", ds / f"images.tmp-{dead}"]
    for d in leftovers:
        (d / "train").mkdir(parents=True)
        (d / "train" / "x.JPEG").write_bytes(b"x" * 1000)
    live = ds / f"images.tmp-{writer.pid}-{host}"  # a live writer's: kept
    other_host = ds / f"images.tmp-{dead}-someotherhost"  # another node's writer on a shared disk, kept
    for d in (live, other_host):
        d.mkdir()
    (ds / "ffcv").mkdir()
    (ds / "ffcv" / f".train.beton.tmp-{dead}-{host}").write_bytes(b"x")
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", "data", cwd=synthetic)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(d.exists() for d in leftovers) and live.exists() and other_host.exists()
    r = cli("convert", "--dataset", "synthetic", "--root", "data", "--on-corrupt", "fail", "--split", "val",
             "--max-resolution", 32, "--page-size", 1 << 21, "--num-workers", 1, cwd=synthetic)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (ds / "ffcv").iterdir()) == ["val.beton", "val.beton.json"]


# --- messages -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error", [(b"", r"empty file \(0 bytes\)"),
                                        (b"not an image", r"UnidentifiedImageError: cannot identify image file")])
def test_bad_image_is_named_by_its_path(cli, work, bad, error):
    from PIL import Image

    src = work / "mine"
    for split in ("train", "val"):
        (src / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(src / split / "a" / "0.png")
    (src / "val" / "a" / "bad.png").write_bytes(bad)
    assert cli("extract", "--source", "imagefolder", "--imagefolder", src, "--dataset", "mine", "--root", "data",
                cwd=work).returncode == 0
    r = cli("convert", "--dataset", "mine", "--root", "data", "--on-corrupt", "fail", "--split", "val", cwd=work)
    fails_with(r, r"data/mine/images/val/a/bad.png: corrupt image \(" + error)
    assert not (work / "data" / "mine" / "ffcv" / "val.beton").exists()


def test_symlink_loop_in_an_imagefolder_is_one_line(cli, work):
    src = work / "mine"
    for split in ("train", "val"):
        (src / split / "a").mkdir(parents=True)
    os.symlink("b", src / "train" / "b")
    r = cli("extract", "--source", "imagefolder", "--imagefolder", src, "--dataset", "mine", "--root", "data",
             cwd=work)
    fails_with(r, r"symlink loop at .*mine/train/b: fix or remove that link")
    assert not (work / "data" / "mine" / "images").exists()


# --- disks: full, read-only (a tiny tmpfs; skipped where mounting is not allowed) ---------------------

@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name, opts):
        path = tmp_path / name
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_disk_full_during_extract_is_one_line_and_leaves_no_temp_tree(cli, synthetic, tmpfs):
    disk = tmpfs("full", "size=64k")
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", disk,
             "--raw-dir", "data/raw/synthetic", cwd=synthetic)
    fails_with(r, r"disk full writing .*full/synthetic/images\.tmp-.*: free space there")
    assert [p.name for p in disk.rglob("*")] == ["synthetic"]  # the staged tree was removed: a clean rerun


def test_disk_full_writing_the_eval_file(cli, synthetic, tmpfs):
    disk = tmpfs("full", "size=4k")
    (disk / "filler").write_bytes(b"x" * 4096)
    torch.save(_state(), synthetic / "mine.pt")
    r = evaluate(cli, synthetic, "--rule", "bp", "--checkpoint", "mine.pt", "--out", disk / "e.json")
    fails_with(r, r"disk full writing .*full/e\.json")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_read_only_data_root_is_one_line(cli, synthetic, tmpfs):
    disk = tmpfs("ro", "ro,size=64k")
    r = cli("extract", "--source", "synthetic", "--dataset", "synthetic", "--root", disk,
             "--raw-dir", "data/raw/synthetic", cwd=synthetic)
    fails_with(r, r"read-only / not writable: .*ro/synthetic")



# --- the one writer (in-process: the contracts every stage relies on) ---------------------------------

def test_writers_leave_the_old_file_and_no_temp_on_failure(tmp_path):
    from dlwt.atomic import atomic_write, save_torch, staged_dir

    f = tmp_path / "x.pt"
    save_torch({"a": torch.zeros(2)}, f)
    with pytest.raises((AttributeError, TypeError, __import__("pickle").PicklingError)):
        save_torch({"a": lambda: 0}, f)  # unpicklable: fails half-way through the write
    assert torch.load(f, weights_only=True)["a"].shape == (2,)
    atomic_write(tmp_path / "y.json", "{}")
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "y.json", None)
    assert (tmp_path / "y.json").read_text() == "{}"
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "old").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(tmp_path / "tree") as tmp:
        (tmp / "new").write_text("new")
        raise KeyboardInterrupt  # Ctrl-C while building
    assert files(tmp_path) == ["tree/old", "x.pt", "y.json"]
