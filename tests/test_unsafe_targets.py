"""Nothing executed, nothing replaced that is not ours (issue 18 items 2 and 4): external weight files load as
data after their published hash is checked, and no writer replaces a device, a fifo or a folder it was pointed at.

    nice pytest -q tests/test_unsafe_targets.py

In-process CLI (`dlwt.cli.main`): a separate process is not the point of any case here.
"""
import os
import random
import re
from pathlib import Path

import pytest
import torch

from dlwt import atomic, checkpoint
from dlwt.cli import main
from dlwt.errors import DlwtError

REPO = Path(__file__).resolve().parents[1]


def one_line(capsys, rc, pattern):
    """rc 2 and exactly one stderr line `dlwt <stage>: ...` matching pattern."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert err[0].startswith("dlwt ") and re.search(pattern, err[0]), err[0]
    return err[0]


class _Planted:
    """Unpickling this runs os.system: what a hostile cache file does under weights_only=False."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def cpu_params(tmp_path):
    (tmp_path / "cpu.yaml").write_text("train: {device: cpu}\n")
    return ["--params", str(REPO / "params.yaml"), "--overlay", str(tmp_path / "cpu.yaml")]


def test_a_crafted_torch_hub_cache_file_is_refused_unread(tmp_path, monkeypatch, capsys, cpu_params):
    marker = tmp_path / "marker"
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"conv1.weight": _Planted(marker)}, cache / "resnet18-f37072fd.pth")  # torchvision's file name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "tv.json"
    rc = main(["evaluate", *cpu_params, "--arch", "resnet18", "--rule", "bp", "--weights", "torchvision",
               "--out", str(out)])
    one_line(capsys, rc, r"resnet18-f37072fd.pth: SHA-256 .* is not the published f37072fd.*delete it")
    assert not marker.exists() and not out.exists()


def test_an_external_file_with_the_right_hash_still_loads_as_data_only(tmp_path):
    marker, f = tmp_path / "marker", tmp_path / "w.pth"
    torch.save({"w": _Planted(marker)}, f)
    import hashlib

    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(DlwtError, match="could run code"):
        checkpoint.load_weights(f, sha256=digest[:8])
    assert not marker.exists()


def test_random_bytes_are_not_a_checkpoint_and_a_plain_pickle_of_code_is_refused(tmp_path):
    import pickle

    # Seeded, and many of them: ~1 random file in 256 starts with GLOBAL's opcode ('c'), which once made
    # this message "could run code" on CI. Seeds 0-511 include such files (checked below).
    starts_like_global = 0
    for seed in range(512):
        data = random.Random(seed).randbytes(4096)
        starts_like_global += data[:1] == b"c"
        (tmp_path / "random.pt").write_bytes(data)
        with pytest.raises(DlwtError, match=r"random.pt: not a (checkpoint \(|readable torch file)") as e:
            checkpoint.read(tmp_path / "random.pt")
        assert "could run code" not in str(e.value), seed
    assert starts_like_global >= 1
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(_Planted(tmp_path / "marker"), protocol=4))
    with pytest.raises(DlwtError, match="could run code"):
        checkpoint.read(tmp_path / "old.pkl")
    assert not (tmp_path / "marker").exists()


def test_random_bytes_as_evaluate_checkpoint_say_not_a_checkpoint(tmp_path, capsys, cpu_params):
    (tmp_path / "random.pt").write_bytes(b"c" + random.Random(0).randbytes(2047))  # GLOBAL's opcode first
    rc = main(["evaluate", *cpu_params, "--arch", "resnet18", "--rule", "bp", "--checkpoint",
               str(tmp_path / "random.pt"), "--out", str(tmp_path / "e.json")])
    one_line(capsys, rc, r"random.pt: not a (checkpoint|readable torch file)")


def test_a_fifo_given_as_write_target_is_refused_and_left_a_fifo(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    rc = main(["dag", "--params", str(REPO / "params.yaml"), "--write", str(fifo)])
    one_line(capsys, rc, r"pipe exists and is a fifo, not a file")
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["pipe"]  # no temp file left beside it


@pytest.mark.parametrize("writer", [
    lambda p: atomic.atomic_write(p, "x"), lambda p: atomic.write_json_atomic(p, {}),
    lambda p: atomic.save_torch({}, p)])
def test_every_file_writer_refuses_a_fifo_and_a_folder(tmp_path, writer):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DlwtError, match="is a fifo, not a file"):
        writer(tmp_path / "fifo")
    with pytest.raises(DlwtError, match="is a folder, not a file"):
        writer(tmp_path / "dir")
    assert (tmp_path / "fifo").is_fifo() and (tmp_path / "dir").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["dir", "fifo"]


def test_folder_writers_refuse_a_fifo_before_any_work(tmp_path):
    os.mkfifo(tmp_path / "images")
    with pytest.raises(DlwtError, match="is a fifo, not a folder"):
        with atomic.staged_dir(tmp_path / "images"):
            raise AssertionError("the block must not run")
    (tmp_path / "new").mkdir()
    with pytest.raises(DlwtError, match="is a fifo, not a folder"):
        atomic.replace_dir(tmp_path / "new", tmp_path / "images")
    assert (tmp_path / "images").is_fifo() and (tmp_path / "new").is_dir()


def test_a_symlink_target_is_replaced_never_followed(tmp_path):
    (tmp_path / "real.json").write_text("keep\n")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    atomic.write_json_atomic(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "real.json").read_text() == "keep\n" and not (tmp_path / "link.json").is_symlink()
