"""What many tests share, built once per test run and copied per test (issue 21: CI in under 10 minutes).

- `cli`: `dlwt ...` called in-process (`dlwt.cli.main`), returning what a subprocess would (exit code, stdout,
  stderr): a process start that imports torch costs 5-10 s on this machine, the call itself milliseconds. A test
  starts a subprocess only for what needs one (signals, affinity masks, torchrun, exec, import hygiene, the
  `python -m dlwt` exit code itself).
- `synthetic_tree` / `digits` / `ffcv_synthetic`: tiny data sets, made once; a test that changes files copies
  them first (`copy_tree`).
- `ci_pipeline`: the CI smoke run itself (`snakemake --cores 2 --configfile config/ci.yaml` on a scratch copy of
  the pipeline files, then every output checked): the finished state the rerun tests start from. `.ci/run` relies
  on it: `make test` runs the pipeline end to end through Snakemake once, so CI needs no separate smoke run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# what a pipeline subprocess (snakemake, dvc, dlwt) gets: this checkout's code and tools, no analytics, no display
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(args, cwd, check=True, env=None, timeout=600):
    """Run a command (snakemake, dvc, git) with ENV; a failure shows the tail of its output."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def copy_tree(src, dst) -> Path:
    """A private copy of a shared fixture's folder (links kept as links, mtimes kept: acquire's md5 stamps
    compare them)."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    return Path(dst)


def call_cli(args, capsys) -> subprocess.CompletedProcess:
    """`dlwt ARGS` in this process: (exit code, stdout, stderr) as a CompletedProcess, as from a subprocess.
    An argparse error (SystemExit) becomes its exit code; any other exception propagates and fails the test,
    which is what a traceback on a user's terminal would be."""
    from dlwt.cli import main

    capsys.readouterr()  # drop what the test printed before
    args = [str(a) for a in args]
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["dlwt", *args], rc, out, err)


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(*args, cwd=folder, env={...}): `dlwt ARGS` run in-process in `cwd` with `env` added to os.environ
    (both restored after the test); returns a CompletedProcess (returncode, stdout, stderr)."""

    def run(*args, cwd=None, env=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, str(value))
        return call_cli(args, capsys)

    return run


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory):
    """A folder whose data/ holds synthetic ILSVRC archives acquired and extracted (3 classes, 4 train / 2 val
    images, 32 px), made with relative paths (`--root data`) so a copy of it works anywhere."""
    from dlwt.data.stages import acquire_stage, extract_stage

    work = tmp_path_factory.mktemp("synthetic")
    synth = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "size": 32}
    with contextlib.chdir(work):
        cfg = {"source": "synthetic", "dataset": "synthetic", "root": "data", "synthetic": synth}
        acquire_stage(cfg)
        extract_stage(cfg)
    return work


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """scikit-learn's digits as an ImageFolder at 8 px (1437 train / 360 val images): real data that trains."""
    from dlwt.data.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(str(root), "digits", size=8)
    return root


@pytest.fixture(scope="session")
def ffcv_synthetic(tmp_path_factory):
    """3 classes x 4 train / 3 val synthetic images at 64 px, extracted and converted to .beton files once;
    returns (root, the generator's record). Tests that change files copy root first."""
    from dlwt.data.imagenet import extract
    from dlwt.data.stages import convert_stage
    from dlwt.data.synthetic import write_archives

    root = tmp_path_factory.mktemp("ffcv")
    rec = write_archives(str(root / "raw" / "synthetic"), classes=3, train_per_class=4, val_per_class=3, size=64)
    extract(str(root / "raw" / "synthetic"), str(root), "synthetic")
    convert_stage({"root": str(root), "dataset": "synthetic", **FFCV_TINY})
    return root, rec


FFCV_TINY = dict(max_resolution=64, page_size=1 << 21, num_workers=1)  # 4 MB betons, one writer process
PIPELINE_FILES = ("Snakefile", "src", "params.yaml", "config/ci.yaml", "paper/published.yaml", "paper/report.rst")


def pipeline_copy(dst: Path, names=PIPELINE_FILES) -> Path:
    """The files `snakemake` needs, copied from this checkout into dst (no caches, no results)."""
    for name in names:
        src, out = REPO / name, dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, out)
    return dst


@pytest.fixture(scope="session")
def ci_pipeline(tmp_path_factory):
    """The CI smoke run, once per test run: `snakemake --cores 2 --configfile config/ci.yaml` (what `make smoke`
    runs) in a scratch git + DVC repository holding the pipeline files, then `dlwt check-outputs` on it. Then
    params.yaml becomes params.yaml + config/ci.yaml (the same values: Snakemake sees nothing to rerun), dvc.yaml
    is generated from it and `dvc commit` records the same finished state for DVC. Returns (repo, params).
    Tests must not change the repository (test_rerun undoes each edit): copy it to change it."""
    import yaml

    from dlwt import dag, dvc_yaml
    from dlwt.params import load

    repo = pipeline_copy(tmp_path_factory.mktemp("ci-pipeline"))
    (repo / ".gitignore").write_text("/data/\n/logs/\n/.snakemake/\n__pycache__/\n/results/\n/paper/ci/\n")
    sh(["git", "init", "-q"], repo)
    sh([BIN / "dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # cache.type hardlink: keeps mtimes
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)  # dvclive (in dlwt train) fails in a repository without commits
    sh([BIN / "snakemake", "--cores", "2", "--configfile", "config/ci.yaml"], repo, timeout=3000)
    params = load(repo / "params.yaml", [repo / "config" / "ci.yaml"])
    with contextlib.chdir(repo):  # `dlwt check-outputs --overlay config/ci.yaml`, the smoke run's last step
        assert len(dag.check_outputs(params)) > 20
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "dvc.yaml").write_text(dvc_yaml.render(params))
    sh([BIN / "dvc", "commit", "-f"], repo)  # dvc.lock: the same finished state, without running it again
    return repo, params
