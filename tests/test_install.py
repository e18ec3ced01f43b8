"""scripts/install.sh checks the system packages FFCV needs before touching apt: nothing to do when they are
there (a normal user on a login node gets through), apt for exactly what is missing as root, and without root or
sudo one line naming the packages to ask an admin for. apt, dpkg, id and sudo are stand-ins on PATH; the venv
part is skipped by a stamp that says it is up to date.

    nice pytest -q tests/test_install.py
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["pkg-config", "libturbojpeg0-dev", "libopencv-dev", "g++", "dataset-fashion-mnist"]


def tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def checkout(tmp_path):
    """A checkout whose .venv is up to date, so install.sh stops after the system packages."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", repo / "scripts" / "install.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, repo / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    tool(repo / ".venv" / "bin", "python", "exit 0")
    want = hashlib.sha256((repo / "pyproject.toml").read_bytes() + (repo / "constraints.txt").read_bytes())
    (repo / ".venv" / ".dlwt-installed").write_text(want.hexdigest()[:16] + "\n")
    return repo


def run(repo: Path, tmp_path: Path, *, installed: set[str], uid: int, sudo: bool):
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    calls = tmp_path / "apt-calls"
    status = "; ".join(f'[ "$3" = "{p}" ] && echo "install ok installed" && exit 0' for p in installed)
    tool(bin_, "dpkg-query", f"{status}; exit 1")
    tool(bin_, "pkg-config", "exit 1")  # no .pc files either: dpkg-query decides
    tool(bin_, "g++", "exit 0") if "g++" in installed else None
    tool(bin_, "apt-get", f'echo "$@" >> {calls}')
    tool(bin_, "id", f"echo {uid}")
    tool(bin_, "sudo", f'if [ "$2" = true ]; then exit {0 if sudo else 1}; fi; shift; exec "$@"')
    env = {**os.environ, "PATH": f"{bin_}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "scripts/install.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, calls.read_text() if calls.exists() else ""


def test_nothing_missing_means_no_apt_even_without_root(checkout, tmp_path):
    proc, apt = run(checkout, tmp_path, installed=set(PACKAGES), uid=1000, sudo=False)
    assert proc.returncode == 0, proc.stderr
    assert apt == "" and "up to date" in proc.stdout


def test_root_installs_exactly_what_is_missing(checkout, tmp_path):
    proc, apt = run(checkout, tmp_path, installed={"pkg-config", "g++", "dataset-fashion-mnist"}, uid=0, sudo=False)
    assert proc.returncode == 0, proc.stderr
    install = [line for line in apt.splitlines() if "install" in line.split()]
    assert len(install) == 1 and install[0].split()[-2:] == ["libturbojpeg0-dev", "libopencv-dev"], apt


def test_a_normal_user_without_sudo_is_told_what_to_ask_an_admin_for(checkout, tmp_path):
    proc, apt = run(checkout, tmp_path, installed={"pkg-config", "g++", "libturbojpeg0-dev", "dataset-fashion-mnist"},
                    uid=1000, sudo=False)
    assert proc.returncode == 1 and apt == ""
    assert "ask an admin to run: apt-get install --no-install-recommends libopencv-dev" in proc.stderr


def test_a_user_with_passwordless_sudo_gets_the_missing_packages(checkout, tmp_path):
    proc, apt = run(checkout, tmp_path, installed={"pkg-config", "libturbojpeg0-dev", "g++", "dataset-fashion-mnist"},
                    uid=1000, sudo=True)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[-1] == "libopencv-dev" for line in apt.splitlines() if "install" in line.split()), apt


def test_a_user_without_the_demo_data_and_without_root_goes_on(checkout, tmp_path, monkeypatch):
    # ImageNet users on a cluster do not need Fashion-MNIST: one line, not a failed install
    proc, apt = run(checkout, tmp_path, installed=set(PACKAGES) - {"dataset-fashion-mnist"}, uid=1000, sudo=False)
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("this machine has the files: the package counts as installed")
    assert proc.returncode == 0 and apt == ""
    assert "the demo's data is missing: dataset-fashion-mnist" in proc.stderr
