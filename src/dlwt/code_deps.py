"""Which source files each stage runs: its code dependencies, computed from the imports, never listed by hand.

    python -c "from dlwt import code_deps; print(code_deps.stage_files('report'))"

A stage starts at one function (ENTRY); the files it depends on are that function's module, the functions of
that module it reaches by name, and every dlwt module they import (anywhere in a module: a lazy import inside a
function counts), followed transitively, with the packages' __init__ files. Imports are read with `ast`: nothing
is imported (no torch), so the Snakefile can compute them on a login node. Modules in OUTPUT_NEUTRAL are left out
with their imports: editing them changes no output of any stage, and must not retrain ImageNet.
DVC lists the files as each stage's deps (content hashes); the Snakefile puts their hash in each rule's command,
so Snakemake's `code` rerun trigger sees the same edits. tests/test_declarations.py fails when a module of the
package is neither a dependency of some stage nor declared neutral here.
"""
from __future__ import annotations

import ast
import functools
import gc
import hashlib
from pathlib import Path

from dlwt.errors import DlwtError

PACKAGE = "dlwt"
PACKAGE_DIR = Path(__file__).resolve().parent

# The function each stage's command runs (module:function).
ENTRY = {"acquire": "dlwt.data.stages:acquire_stage", "extract": "dlwt.data.stages:extract_stage",
         "convert": "dlwt.data.stages:convert_stage", "train": "dlwt.train:main",
         "evaluate": "dlwt.evaluate:main", "report": "dlwt.report:main"}

# Modules whose edits change no stage's outputs, each with the reason. A module goes here only when that is
# true of all of it: a module mixing output code with logging is a dependency.
OUTPUT_NEUTRAL = {
    "dlwt.errors": "the error type; messages are printed, never written into an output",
    "dlwt.progress": "progress lines and the tqdm bar (logs only)",
    "dlwt.live": "DVCLive's live metrics: a view of training for `dvc plots`, kept across reruns (persist)",
    "dlwt.provenance": "where and with what a run ran (git SHA, versions, device) in config.json: never a number",
    "dlwt.params": "loading and validating params: the values a stage reads are its params dependencies",
    "dlwt.dag": "which jobs run and when (the runners' bookkeeping), not what a job writes",
    "dlwt.code_deps": "this file: the runners' bookkeeping",
    "dlwt.dvc_yaml": "dvc.yaml's generator: the runners' bookkeeping",
    "dlwt.cli": "the command line's dispatch to a stage's entry function",
    "dlwt.__main__": "`python -m dlwt`: the command line",
    "dlwt.doctor": "`dlwt doctor`: checks and timings on a GPU node, no pipeline stage",
    "dlwt.rulecost": "each rule's step timed and counted in FLOPs for doctor, gpu-check and bench/: no stage",
    **{f"dlwt.gpucheck{m}": "`make gpu-check`: the node's check, part by part; it runs the stages, no stage runs it"
       for m in ("", ".__main__", ".record", ".env", ".numerics", ".cost", ".pipeline", ".compile", ".claims")},
}


def _module_file(name: str) -> Path | None:
    """The source file of dlwt module `name` (a package's __init__.py), or None when it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _tree(name: str) -> ast.Module:
    path = _module_file(name)
    if path is None:
        raise DlwtError(f"code_deps: no module {name} in {PACKAGE_DIR}")
    source = path.read_text()
    # CPython 3.11 counts recursion while it builds the AST's objects; a garbage collection in the middle that
    # runs finalizers (FFCV's numba-compiled loaders print from theirs) leaves the count off and ast.parse raises
    # "SystemError: AST constructor recursion depth mismatch" (seen in the test suite): no collection meanwhile
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, str(path))
    finally:
        if enabled:
            gc.enable()


def _lazy_targets(package: str) -> set[str]:
    """Modules a package's __init__ imports on attribute access (PEP 562: importlib.import_module("dlwt.x"))."""
    return {node.args[0].value for node in ast.walk(_tree(package))
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


def _imports(name: str, nodes) -> set[str]:
    """dlwt modules the statements `nodes` of module `name` import or reach as attributes of the package."""
    is_pkg = _module_file(name).name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found, aliases = set(), {}
    nodes = list(nodes)
    # a module that imports by name (importlib.import_module, as data/sources.py's registry does) depends on
    # every dlwt module one of its strings names, relative to its package or absolute
    dynamic = any(isinstance(n, ast.Name) and n.id == "import_module" for top in nodes for n in ast.walk(top))
    for node in (n for top in nodes for n in ast.walk(top)):
        if dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            found |= {m for m in (f"{here}.{node.value}", node.value) if _module_file(m)}
        if isinstance(node, ast.Import):
            for a in node.names:
                found.add(a.name)
                aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if _module_file(sub) else base)
                if not _module_file(sub) and _module_file(base) and _module_file(base).name == "__init__.py":
                    found |= _lazy_targets(base)  # `from dlwt import convert`: served lazily by the package
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            base = aliases[node.value.id]  # `import dlwt` then `dlwt.models.build(...)`, `dlwt.mirror_step(...)`
            sub = f"{base}.{node.attr}"
            found |= {sub} if _module_file(sub) else _lazy_targets(base) if _module_file(base) else set()
    return {m for m in found if _module_file(m)}


def _reachable(name: str, function: str) -> list:
    """The module-level statements of `name` that run when `function` is called: the imports and assignments at
    the top, the function and the module's functions and classes it names, transitively."""
    tree = _tree(name)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
    if function not in defs:
        raise DlwtError(f"code_deps.ENTRY: {name} has no function {function}")
    todo, seen = [function], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [n.id for n in ast.walk(defs[f]) if isinstance(n, ast.Name) and n.id in defs]
    return [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))] + \
        [defs[f] for f in sorted(seen)]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def stage_modules(stage: str) -> tuple[str, ...]:
    """The dlwt modules `stage` runs, neutral ones left out, sorted."""
    if stage not in ENTRY:
        raise DlwtError(f"code_deps: no stage {stage!r} (stages: {', '.join(ENTRY)})")
    module, function = ENTRY[stage].split(":")
    found, todo = {module}, list(_imports(module, _reachable(module, function))) + _parents(module)
    while todo:
        m = todo.pop()
        if m in found or m in OUTPUT_NEUTRAL:
            continue
        found.add(m)
        todo += [*_imports(m, _tree(m).body), *_parents(m)]
    return tuple(sorted(found - set(OUTPUT_NEUTRAL)))


def all_modules() -> list[str]:
    """Every module of the package's source tree."""
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append(".".join([PACKAGE, *parts]))
    return out


def stage_files(stage: str) -> list[str]:
    """`stage`'s code dependencies as paths relative to the package's folder's parent (e.g. dlwt/report.py)."""
    return [str(_module_file(m).relative_to(PACKAGE_DIR.parent)) for m in stage_modules(stage)]


@functools.cache
def stage_hash(stage: str) -> str:
    """A short hash of the contents of `stage`'s code dependencies (the Snakefile's `code` rerun trigger)."""
    h = hashlib.sha256()
    for m in stage_modules(stage):
        h.update(m.encode() + b"\0" + _module_file(m).read_bytes() + b"\0")
    return h.hexdigest()[:16]
