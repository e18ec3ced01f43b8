"""Bad params and flags get one line (exit 2) naming the key or file and the fix, before any work (issue 18:
the YAML alias bomb and deep nesting of item 7, and the params one-liners).

    nice pytest -q tests/test_params_one_line.py

In-process CLI (`dlwt.cli.main`, capsys); the data case runs the real stages on 12 synthetic images.
"""
import os
import re
import shutil
from pathlib import Path

import pytest

from dlwt.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(capsys, rc, pattern):
    """rc 2 and exactly one stderr line `dlwt <stage>: ...` matching pattern (no traceback, no repr)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert err[0].startswith("dlwt ") and re.search(pattern, err[0]) and "0x" not in err[0], err[0]
    assert len(err[0]) < 300, err[0]
    return err[0]


def params_with(work, text, name="over.yaml", mode="w"):
    (work / name).write_text(text) if mode == "w" else (work / name).write_bytes(text)
    return main(["params", "--overlay", name])


def test_an_alias_bomb_is_refused_before_it_expands(work, capsys):
    lines = ['a: &a ["lol"]'] + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    rc = params_with(work, "\n".join(lines) + "\n")  # expanded: 9^8 values, 190 s and 2.7 GB in jsonschema
    one_line(capsys, rc, r"over.yaml: line 2: YAML alias \*a refused .*write the value out")


def test_deep_nesting_is_one_line_not_a_recursion_error(work, capsys):
    rc = params_with(work, "train: " + "[" * 20000 + "]" * 20000 + "\n")
    one_line(capsys, rc, r"over.yaml: line 1: nested more than \d+ levels deep")


@pytest.mark.parametrize("text, pattern", [
    ("train: {warmup_epochs: .nan}\n", r"train.warmup_epochs: nan is not a value any setting takes: write a finite"),
    ("train: {warmup_epochs: .inf}\n", r"train.warmup_epochs: inf is not a value"),
    ("data: {crop_ratio: .nan}\n", r"data.crop_ratio: nan is not a value"),
    ("model: {seeds: [0, 100000000000000000000000]}\n", r"model.seeds\[1\]: seed 1000+ is outside 0..4294967295"),
    ("data: {seed: -1}\n", r"data.seed: seed -1 is outside"),
    ("train: {epochs: 100000000000000000000000}\n", r"train.epochs: 1000+ does not fit in 64 bits"),
    ("train:\n  1: a\n  b: c\n", r"train: key 1 is int, not text"),
    (f"exp: {'x' * 300}\n", r"exp: 300 characters, at most 100 .*shorter name"),
])
def test_values_no_setting_takes_name_the_key(work, capsys, text, pattern):
    one_line(capsys, params_with(work, text), r"params.yaml \+ over.yaml: " + pattern)


def test_a_binary_overlay_and_a_folder_overlay_say_what_they_are(work, capsys):
    one_line(capsys, params_with(work, bytes(range(256)) * 4, mode="wb"), r"over.yaml: not a text file .*--overlay")
    (work / "dir.yaml").mkdir()
    one_line(capsys, main(["params", "--overlay", "dir.yaml"]), r"dir.yaml: is a folder, not an overlay file")


def test_a_missing_configfile_is_named_by_the_preflight_the_readme_gives(work, capsys):
    """Snakemake reads --configfile before the Snakefile (its own traceback); `dlwt params --overlay X` is the
    preflight the README points to."""
    one_line(capsys, main(["params", "--overlay", "missing.yaml"]), r"missing.yaml: no such overlay file")
    assert "dlwt params --overlay" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_seed_flag_beyond_what_the_rngs_take(work, capsys, stage):
    extra = ["--checkpoint", "x.pt"] if stage == "evaluate" else []
    rc = main([stage, "--arch", "resnet18", "--rule", "bp", "--seed", str(2**70), *extra, "--out", "o"])
    one_line(capsys, rc, rf"dlwt {stage}: --seed {2**70}: outside 0..4294967295")


def test_doctor_steps_zero(work, capsys):
    one_line(capsys, main(["doctor", "--steps", "0"]), r"dlwt doctor: --steps 0: time at least 1 step")


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_an_empty_out_is_refused(work, capsys, stage):
    extra = ["--checkpoint", "x.pt"] if stage == "evaluate" else []
    rc = main([stage, "--arch", "resnet18", "--rule", "bp", *extra, "--out", ""])
    one_line(capsys, rc, rf"dlwt {stage}: --out: empty path")
    assert sorted(os.listdir(work)) == ["params.yaml"]


def test_train_out_an_existing_file_and_evaluate_out_an_existing_folder(work, capsys):
    (work / "run").write_text("mine\n")
    one_line(capsys, main(["train", "--arch", "resnet18", "--rule", "bp", "--out", "run"]),
             r"--out: run exists and is a file, not a folder")
    (work / "eval.json").mkdir()
    rc = main(["evaluate", "--arch", "resnet18", "--rule", "bp", "--checkpoint", "x.pt", "--out", "eval.json"])
    one_line(capsys, rc, r"--out: eval.json exists and is a folder, not a file")  # before the evaluation ran
    assert (work / "run").read_text() == "mine\n" and (work / "eval.json").is_dir()


def test_a_batch_larger_than_the_training_set(work, capsys):
    for stage in ("acquire", "extract"):
        args = [stage, "--source", "synthetic", "--dataset", "synthetic", "--root", "data"]
        args += ["--classes", "3", "--train-per-class", "4", "--val-per-class", "2", "--size", "32"] * (stage == "acquire")
        assert main(args) == 0
    capsys.readouterr()
    (work / "big.yaml").write_text(
        "data: {source: synthetic, dataset: synthetic, root: data, backend: torchvision, batch_size: 64, res: 32,\n"
        "       val_res: 32, num_workers: 0}\nmodel: {stem: small}\ntrain: {device: cpu, epochs: 1}\n")
    rc = main(["train", "--overlay", "big.yaml", "--arch", "resnet18", "--rule", "bp", "--out", "runs/r"])
    one_line(capsys, rc, r"data.batch_size 64 is larger than the 12 training images of synthetic: lower data.batch_size")
    assert not (work / "runs" / "r" / "checkpoints").exists() or not os.listdir(work / "runs" / "r" / "checkpoints")
