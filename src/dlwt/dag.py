"""The pipeline's one DAG: every job's command, the files it reads and writes, the params keys it reads and the
source files it runs. The Snakefile runs it, dvc.yaml is generated from it (dlwt.dvc_yaml), and `dlwt train`
restarts a half-finished run exactly when one of `train_keys` changed. Nothing here is declared twice: the keys
come from each key's `x-read-by` in params_schema.yaml, the files from dlwt.layout, the code from dlwt.code_deps.
Imports neither torch nor pandas: the Snakefile reads it on login nodes.

    dlwt dag                                          # every job: stage, command, params keys
    dlwt dag --write dvc.yaml                         # regenerate dvc.yaml from params.yaml (after editing model.*,
    dlwt dag --check dvc.yaml                         #   exp, data.root/dataset/source); --check: exit 2 if stale (CI)
    dlwt dag --overlay config/demo.yaml --write dvc.yaml   # DVC on an overlay: dvc.yaml + params.demo.yaml

A key is a dotted path into params ("train.lr"), one per schema node with x-read-by (data.urls is one key).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field

from dlwt import code_deps, layout
from dlwt.data import acquired_path, ffcv_dir, images_dir
from dlwt.errors import DlwtError

STAGES = ("acquire", "extract", "convert", "train", "evaluate", "report")


@functools.lru_cache(maxsize=1)
def declared() -> dict[str, tuple[tuple[str, ...], bool]]:
    """{dotted key: (its x-read-by, x-names-files)} for every key of params_schema.yaml, in schema order: the one
    declaration of who reads what. A key is a node with `x-read-by` (data.urls is one key: a free-form map)."""
    from dlwt.params import schema

    out = {}

    def walk(node: dict, prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            key = prefix + name
            if "x-read-by" in sub:
                out[key] = (tuple(sub["x-read-by"]), bool(sub.get("x-names-files")))
            elif "properties" in sub:
                walk(sub, key + ".")
            else:
                raise DlwtError(f"src/dlwt/params_schema.yaml: {key} has no x-read-by: list the stages whose "
                                "outputs depend on it ([] when none do)")
    walk(schema(), "")
    return out


def readers_keys(stage: str, qualifier: str | None = None) -> list[str]:
    """The keys declared read by every job of `stage`, or by its jobs for `qualifier` (a rule or a source)."""
    return [k for k, (who, _) in declared().items() if stage in who or f"{stage}:{qualifier}" in who]


def operational_keys() -> list[str]:
    """Keys no stage's outputs depend on (x-read-by: []) that name no files: editing them reruns nothing."""
    return [k for k, (who, names) in declared().items() if not who and not names]


def path_keys() -> list[str]:
    """Keys that are part of output paths (x-names-files): any stage may read them to find its files."""
    return [k for k, (_, names) in declared().items() if names]


_ABSENT = object()


def _get(params: dict, key: str, absent=None):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return absent  # None: an older params file without the key compares equal to an explicit null
        node = node[part]
    return node


def present(params: dict, key: str) -> bool:
    """Whether params holds `key` (as written: DVC stops on a params key missing from its file)."""
    return _get(params, key, _ABSENT) is not _ABSENT


def pick(params: dict, keys) -> dict:
    """{dotted key: value} for `keys` (absent keys give None): what a job's outputs depend on."""
    return {key: _get(params, key) for key in keys}


def nested(params: dict, keys) -> dict:
    """The part of params holding `keys` only, nested as in params (in params order): what the report prints."""
    out: dict = {}
    want = set(keys)

    def walk(node: dict, into: dict, prefix: str) -> None:
        for name, value in node.items():
            key = prefix + name
            if key in want:
                into[name] = value
            elif isinstance(value, dict) and any(k.startswith(key + ".") for k in want):
                walk(value, into.setdefault(name, {}), key + ".")
    walk(params, out, "")
    return out


def train_keys(rule: str) -> list[str]:
    """The dotted keys a train run of `rule` depends on (the mirror's only for wm)."""
    return readers_keys("train", rule)


def changed_keys(old: dict, new: dict, rule: str) -> list[str]:
    """The keys of a train run of `rule` whose values differ between two params (e.g. a checkpoint's and the
    current ones): `dlwt train` restarts when this is not empty and names them, and resumes otherwise."""
    keys = train_keys(rule)
    before, after = pick(old, keys), pick(new, keys)
    return [k for k in keys if before[k] != after[k]]


def stage_keys(params: dict, stage: str, rule: str | None = None) -> list[str]:
    """The dotted keys one job of `stage` reads (train: of that rule; acquire/extract: of params' source).
    The report's also include every key its upstream jobs read: its README prints them (report_keys)."""
    qualifier = rule if stage == "train" else params["data"]["source"] if stage in ("acquire", "extract") else None
    return readers_keys(stage, qualifier)


@dataclass
class Job:
    """One job of the DAG: a data stage, the report, or one (stage, run) of train/evaluate."""
    stage: str
    cmd: list[str]                 # the dlwt command; "{params}" stands for the params file
    deps: list[str]                # files other jobs write (or the user provides) that it reads
    outs: list[str]                # files it writes
    keys: list[str]                # params keys it reads
    run: str | None = None         # <arch>-<rule>-s<seed> for train and evaluate
    code: list = field(default_factory=list)  # its source files (code_deps), repository paths: DVC's code deps
    # the DVCLive folder a train job appends to across a resume: a DVC output that a rerun keeps (persist), whose
    # series dvc.yaml's plots compare; Snakemake is not told, since it deletes a job's declared outputs first
    live: str | None = None

    @property
    def name(self) -> str:
        """dvc.yaml's stage name ('@' is DVC's own foreach separator)."""
        return f"{self.stage}-{self.run}" if self.run else self.stage

    def command(self, params_file: str = "params.yaml") -> str:
        return " ".join(params_file if w == "{params}" else shlex.quote(w) for w in self.cmd)

    def values(self, params: dict) -> str:
        """The values of its keys as one canonical string: the Snakefile's `params:` (a rerun trigger)."""
        return json.dumps(pick(params, self.keys), sort_keys=True)


def data_paths(params: dict) -> dict:
    d = params["data"]
    root, ds = d["root"], layout.safe_name(d["dataset"], "data.dataset")
    ffcv = ffcv_dir(root, ds)
    return {"acquired": acquired_path(root, ds), "images": images_dir(root, ds),
            "train_beton": f"{ffcv}/train.beton", "val_beton": f"{ffcv}/val.beton",
            # the sidecars are written last: an interrupted convert leaves neither, so both runners rerun it
            "sidecars": [f"{ffcv}/train.beton.json", f"{ffcv}/val.beton.json"]}


def jobs(params: dict) -> list[Job]:
    """Every job params asks for, in run order (data stages, then per run train and evaluate, then report)."""
    exp, p = params["exp"], data_paths(params)
    out = [Job("acquire", ["dlwt", "acquire", "--params", "{params}"], [], [p["acquired"]],
               stage_keys(params, "acquire")),
           Job("extract", ["dlwt", "extract", "--params", "{params}"], [p["acquired"]], [p["images"]],
               stage_keys(params, "extract")),
           Job("convert", ["dlwt", "convert", "--params", "{params}"], [p["images"]],
               [p["train_beton"], p["val_beton"], *p["sidecars"]], stage_keys(params, "convert"))]
    for run in layout.run_ids(params):
        arch, rule, seed = layout.parse_run_id(run)
        r = layout.Run(layout.run_dir(exp, run))
        who = ["--arch", arch, "--rule", rule, "--seed", str(seed)]
        out.append(Job("train", ["dlwt", "train", "--params", "{params}", *who, "--out", str(r.out)],
                       [p["train_beton"], p["val_beton"]], [str(r.final), str(r.metrics), str(r.config)],
                       stage_keys(params, "train", rule), run,
                       live=str(r.live)))
        out.append(Job("evaluate", ["dlwt", "evaluate", "--params", "{params}", *who, "--checkpoint", str(r.final),
                                    "--out", str(layout.eval_path(exp, run))],
                       [p["val_beton"], str(r.final)], [str(layout.eval_path(exp, run))],
                       stage_keys(params, "evaluate"), run))
    reads = [str(path) for run in layout.run_ids(params)
             for path in (layout.eval_path(exp, run), layout.Run(layout.run_dir(exp, run)).metrics)]
    files = [(params.get("report") or {}).get(k) for k in ("published", "notes")]  # files the report reads
    upstream = [k for j in out for k in j.keys]
    out.append(Job("report", ["dlwt", "report", "--params", "{params}"], reads + [f for f in files if f],
                   [str(f) for f in layout.report_outputs(params)],
                   list(dict.fromkeys(stage_keys(params, "report") + upstream))))
    for j in out:
        j.code = stage_code(j.stage)
    return out


def stage_code(stage: str) -> list[str]:
    """The repository paths of the source files `stage` runs (computed from imports: dlwt.code_deps)."""
    return [f"{layout.SOURCE_ROOT}/{f}" for f in code_deps.stage_files(stage)]


def report_keys(params: dict) -> list[str]:
    """Every key the report depends on: its own and its upstream jobs' (what the results depend on). The report
    prints exactly these in its README, so no other edit can leave the README stale."""
    return job(params, "report").keys


def job(params: dict, stage: str, run: str | None = None) -> Job:
    """The one job of `stage` (and `run`, for train/evaluate)."""
    for j in jobs(params):
        if j.stage == stage and j.run == run:
            return j
    raise DlwtError(f"no {stage} job {run!r} in params: runs are {', '.join(layout.run_ids(params))}")



# ---- what the Snakefile needs besides the jobs ------------------------------------------------------------------
class PipelineError(DlwtError):
    """The pipeline cannot start or did not finish; the message says what to do."""


def params_file(params: dict, folder: str = ".snakemake/dlwt") -> str:
    """The merged params written once to <folder>/params-<hash of content>.yaml; returns its path.

    Every Snakemake job reads its params from this file (through $DLWT_PARAMS), so a rule's command is the
    same whatever overlays Snakemake was given: Snakemake reruns a job when its params values change (each
    rule's `params:`), never because an overlay was added. The name holds the content's hash, so concurrent
    Snakemake runs with other overlays in the same folder never rewrite each other's file."""
    import yaml

    text = yaml.safe_dump(params, sort_keys=False)
    path = os.path.join(folder, f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml")
    if not os.path.isfile(path):
        from dlwt.atomic import atomic_write

        atomic_write(path, text)
    return path


def preflight(params: dict, container_method: bool = False) -> None:
    """Stop before any job when it would fail later: the ImageNet archives are neither in place nor
    downloadable, or jobs run in the Apptainer image (--sdm apptainer) and the image file is missing."""
    from dlwt.data.config import resolve

    d = resolve(params["data"])
    image = params["container"]
    if container_method and "://" not in image and not os.path.isfile(image):
        raise PipelineError(
            f"container image {image} not found (params `container`, used by --sdm apptainer): build it with "
            f"`apptainer build --fakeroot {image} dlwt.def` (README: SLURM), or run without --sdm apptainer")
    from dlwt.data.sources import SOURCES

    if not SOURCES[d["source"]].archives:  # the registry: only a source of ILSVRC archives is checked here
        return
    from dlwt.data.imagenet import ARCHIVES

    missing = [name for role, (name, _) in ARCHIVES.items()
               if not os.path.exists(os.path.join(d["raw_dir"], name)) and role not in d["urls"]]
    if missing:
        raise PipelineError(
            f"ImageNet archives missing from {d['raw_dir']}/: {', '.join(missing)}. Put them there (an ImageNet "
            "account is needed; or give your own download links as data.urls in params.yaml), or run the demo "
            "instead: snakemake --cores all --configfile config/demo.yaml")


def check_outputs(params: dict) -> list[str]:
    """Every output of every job params asks for, each a non-empty file; returns them. Raises PipelineError
    naming the first one missing or empty (`dlwt check-outputs`: the smoke run's last step)."""
    files = []
    for j in jobs(params):
        for out in j.outs:
            if os.path.isdir(out):  # extract's ImageFolder tree: its classes.json marks it finished
                out = os.path.join(out, "classes.json")
            if not os.path.isfile(out) or os.path.getsize(out) == 0:
                raise PipelineError(f"{out} is missing or empty: the pipeline did not finish (see logs/)")
            files.append(out)
    return files


def add_check_outputs_subparser(sub) -> None:
    from dlwt.params import add_arguments

    p = sub.add_parser("check-outputs", help="exit 2 unless every output of the pipeline exists and is non-empty")
    add_arguments(p)

    def run(args) -> int:
        from dlwt.params import load

        print(f"dlwt check-outputs: {len(check_outputs(load(args.params, args.overlay)))} files, all non-empty")
        return 0

    p.set_defaults(func=run)
