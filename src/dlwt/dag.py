"""The pipeline's one DAG: every job's command, the files it reads and writes, and the params keys it reads.
The Snakefile runs it, dvc.yaml is generated from it, and `dlwt train` restarts a half-finished run exactly
when one of `train_keys` changed. Imports neither torch nor pandas: the Snakefile reads it on login nodes.

    dlwt dag                                  # every job: stage, command, params keys
    dlwt dag --write dvc.yaml                 # regenerate dvc.yaml from params.yaml (after editing model.*, exp,
    dlwt dag --check dvc.yaml                 #   data.root/dataset/source); --check: exit 2 when it is stale (CI)

A key is a dotted path into params ("train.lr"); a key naming a section ("mirror") means every key under it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field

from dlwt import layout
from dlwt.data import acquired_path, ffcv_dir, images_dir
from dlwt.errors import DlwtError

STAGES = ("acquire", "extract", "convert", "train", "evaluate", "report")

# Settings that change how fast or where a job runs, never what it writes: editing them reruns nothing, and
# `dlwt train` resumes across them. tests/test_pipeline.py checks that every key of the schema is either read by a
# stage below or listed here, so a new key must be placed on one side.
OPERATIONAL = ("container", "data.num_workers", "data.os_cache", "train.device",
               "train.check_every", "train.checkpoint_minutes", "train.log_every")

# acquire and extract read the section of the chosen source only (editing data.digits does not redo ImageNet).
ACQUIRE_KEYS = {"imagenet": ("data.raw_dir", "data.urls"), "synthetic": ("data.raw_dir", "data.synthetic"),
                "imagefolder": ("data.imagefolder",), "digits": (),
                "fashion-mnist": ("data.fashion_mnist",), "cifar10": ("data.cifar",), "cifar100": ("data.cifar",)}
EXTRACT_KEYS = {"imagenet": (), "synthetic": (), "imagefolder": ("data.imagefolder",), "digits": ("data.digits",),
                "fashion-mnist": ("data.fashion_mnist",), "cifar10": ("data.cifar",), "cifar100": ("data.cifar",)}
CONVERT_KEYS = ("data.max_resolution", "data.jpeg_quality", "data.compress_probability", "data.write_mode",
                "data.page_size", "data.on_corrupt")
# What the validation loader reads (train runs validate every epoch, evaluate once at the end).
VAL_LOADER_KEYS = ("data.backend", "data.batch_size", "data.res", "data.val_res", "data.crop_ratio", "model.stem")
TRAIN_KEYS = (*VAL_LOADER_KEYS, "data.train_crop_scale", "data.train_flip", "data.seed", "data.min_res", "data.ramp",
              "train.epochs", "train.lr", "train.lr_batch", "train.momentum", "train.nesterov", "train.weight_decay",
              "train.schedule", "train.milestones", "train.gamma", "train.warmup_epochs", "train.label_smoothing",
              "train.amp", "train.channels_last", "train.compile", "train.align_batch",
              "train.gpus")  # gpus x data.batch_size is the global batch: the lr and the steps per epoch follow it
WM_KEYS = ("mirror",)  # the weight mirror runs in wm's training only
EVALUATE_KEYS = (*VAL_LOADER_KEYS, "train.amp", "train.grad_batch")
REPORT_KEYS = ("exp", "data.dataset", "model.archs", "model.rules", "model.seeds", "report")

# Code each stage runs, for DVC (content hashes: a code edit reruns the stage). Snakemake goes by mtimes, which
# a `git checkout` touches, so it does not list code: after a code change use `snakemake --forcerun <rule>`.
CODE = {"acquire": ("src/dlwt/data/stages.py", "src/dlwt/data/imagenet.py", "src/dlwt/data/synthetic.py"),
        "extract": ("src/dlwt/data/stages.py", "src/dlwt/data/imagenet.py", "src/dlwt/data/digits.py",
                    "src/dlwt/data/imagefolder.py"),
        "convert": ("src/dlwt/data/ffcv_io.py",),
        "train": ("src/dlwt/rules.py", "src/dlwt/feedback_autograd.py", "src/dlwt/models.py", "src/dlwt/engine.py",
                  "src/dlwt/train.py", "src/dlwt/data/loaders.py"),
        "evaluate": ("src/dlwt/rules.py", "src/dlwt/feedback_autograd.py", "src/dlwt/models.py", "src/dlwt/engine.py",
                     "src/dlwt/evaluate.py", "src/dlwt/data/loaders.py"),
        "report": ("src/dlwt/report.py", "src/dlwt/figures.py")}


_ABSENT = object()


def _get(params: dict, key: str, absent=None):
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return absent  # None: an older params file without the key compares equal to an explicit null
        node = node[part]
    return node


def _leaves(params: dict, key: str) -> list[str]:
    """`key`, or every leaf key under it when it names a non-empty section of params."""
    value = _get(params, key)
    if isinstance(value, dict) and value and key not in ("data.urls",):
        return [leaf for sub in value for leaf in _leaves(params, f"{key}.{sub}")]
    return [key]


def expand(params: dict, keys) -> list[str]:
    """Leaf keys of `keys` in params, in order, without repeats."""
    return list(dict.fromkeys(leaf for key in keys for leaf in _leaves(params, key)))


def pick(params: dict, keys) -> dict:
    """{dotted key: value} for `keys` (absent keys give None): what a job's outputs depend on."""
    return {key: _get(params, key) for key in keys}


def train_keys(params: dict, rule: str) -> list[str]:
    """The dotted keys a train run of `rule` depends on (the mirror's only for wm)."""
    return expand(params, TRAIN_KEYS + (WM_KEYS if rule == "wm" else ()))


def changed_keys(old: dict, new: dict, rule: str) -> list[str]:
    """The keys of a train run of `rule` whose values differ between two params (e.g. a checkpoint's and the
    current ones): `dlwt train` restarts when this is not empty and names them, and resumes otherwise."""
    keys = list(dict.fromkeys(train_keys(old, rule) + train_keys(new, rule)))
    before, after = pick(old, keys), pick(new, keys)
    return [k for k in keys if before[k] != after[k]]


def stage_keys(params: dict, stage: str, rule: str | None = None) -> list[str]:
    """The dotted keys one job of `stage` reads (train: of that rule)."""
    source = params["data"]["source"]
    keys = {"acquire": ("data.source", *ACQUIRE_KEYS.get(source, ())),
            "extract": ("data.source", *EXTRACT_KEYS.get(source, ())),
            "convert": CONVERT_KEYS, "evaluate": EVALUATE_KEYS, "report": REPORT_KEYS}
    if stage == "train":
        return train_keys(params, rule)
    return expand(params, keys[stage])


@dataclass
class Job:
    """One job of the DAG: a data stage, the report, or one (stage, run) of train/evaluate."""
    stage: str
    cmd: list[str]                 # the dlwt command; "{params}" stands for the params file
    deps: list[str]                # files other jobs write (or the user provides) that it reads
    outs: list[str]                # files it writes
    keys: list[str]                # params keys it reads
    run: str | None = None         # <arch>-<rule>-s<seed> for train and evaluate
    code: tuple = field(default=())
    # live records (DVCLive) the job appends to across a resume: DVC shows them as metrics and plots (persist: a
    # rerun keeps them); Snakemake is not told, since it deletes a job's declared outputs before running it
    live: dict = field(default_factory=dict)

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
                       live={"metrics": str(r.live / "metrics.json"), "plots": str(r.live / "plots" / "metrics")}))
        out.append(Job("evaluate", ["dlwt", "evaluate", "--params", "{params}", *who, "--checkpoint", str(r.final),
                                    "--out", str(layout.eval_path(exp, run))],
                       [p["val_beton"], str(r.final)], [str(layout.eval_path(exp, run))],
                       stage_keys(params, "evaluate"), run))
    reads = [str(path) for run in layout.run_ids(params)
             for path in (layout.eval_path(exp, run), layout.Run(layout.run_dir(exp, run)).metrics)]
    published = (params.get("report") or {}).get("published")
    out.append(Job("report", ["dlwt", "report", "--params", "{params}"], reads + ([published] if published else []),
                   [str(f) for f in layout.report_outputs(params)], stage_keys(params, "report")))
    for job in out:
        job.code = CODE[job.stage]
    return out


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
    if d["source"] != "imagenet":
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


# ---- dvc.yaml: the same jobs, one DVC stage each --------------------------------------------------------------
DVC_HEADER = """\
# GENERATED from src/dlwt/dag.py and params.yaml by `dlwt dag --write dvc.yaml`: do not edit by hand (CI runs
# `dlwt dag --check dvc.yaml`). Regenerate after editing model.archs/rules/seeds, exp or data.root/dataset/source.
# One stage per job, each with exactly the params keys it reads: DVC's foreach/matrix cannot vary params by item,
# and a wm run must depend on mirror.* while the other rules' runs must not. dvc.yaml reads params.yaml only
# (no overlays). Data stages' outputs are not cached (ImageNet is too big for a remote); final.pt is.
"""


def dvc_stages(params: dict, written: dict | None = None) -> dict:
    """dvc.yaml's `stages:` mapping for params. `written`: the params file as written, before defaults are
    filled in; keys it lacks are left out (DVC stops on a params key missing from params.yaml)."""
    written = params if written is None else written
    exp = params["exp"]
    metrics = str(layout.exp_dir(exp) / "summary.json")
    stages = {}
    for j in jobs(params):
        outs = []
        for path in j.outs:
            if path == metrics:
                continue
            cached = j.stage == "train" and path.endswith(".pt")  # checkpoints: `dvc push` backs them up
            outs.append(path if cached else {path: {"cache": False}})
        stage = {"cmd": j.command("params.yaml"), "deps": [*j.deps, *j.code],
                 "params": [k for k in j.keys if _get(written, k, _ABSENT) is not _ABSENT], "outs": outs}
        if j.live:
            stage["metrics"] = [{j.live["metrics"]: {"cache": False, "persist": True}}]
            stage["plots"] = [{j.live["plots"]: {"cache": False, "persist": True, "x": "step"}}]
        if j.stage == "report":
            stage["metrics"] = [{metrics: {"cache": False}}]

        stages[j.name] = stage
    return stages


def dvc_yaml(params: dict, written: dict | None = None) -> str:
    import yaml

    # curves.csv (a report output): epoch and one column of top-1 error per <arch>-<rule>, the mean over seeds.
    # A stage's plot takes one y column, a top-level plot several: one line per arch-rule in `dvc plots show`.
    curves = str(layout.exp_dir(params["exp"]) / "curves.csv")
    lines = [f"{a}-{r}" for a in params["model"]["archs"] for r in params["model"]["rules"]]
    plots = [{curves: {"x": "epoch", "y": lines, "template": "linear", "y_label": "top-1 error (%)"}}]
    return DVC_HEADER + yaml.safe_dump({"stages": dvc_stages(params, written), "plots": plots}, sort_keys=False,
                                       width=116, default_flow_style=None)


def main(args) -> int:
    from dlwt.params import load, read_merged

    params, written = load(args.params, args.overlay), read_merged(args.params, args.overlay)
    if args.write:
        from dlwt.atomic import atomic_write

        atomic_write(args.write, dvc_yaml(params, written))
        print(f"dlwt dag: wrote {args.write} ({len(jobs(params))} stages)")
    elif args.check:
        try:
            current = open(args.check).read()
        except OSError as e:
            raise DlwtError(f"{args.check}: cannot read ({e.strerror}); run `dlwt dag --write {args.check}`") from None
        if current != dvc_yaml(params, written):
            raise DlwtError(f"{args.check} is not what {args.params} generates: run `dlwt dag --write {args.check}` "
                            "and commit it")
        print(f"dlwt dag: {args.check} is up to date")
    else:
        for j in jobs(params):
            print(f"{j.name}\n    {j.command(args.params)}\n    params: {', '.join(j.keys) or '-'}")
    return 0


def add_subparser(sub) -> None:
    import argparse

    from dlwt.params import add_arguments

    p = sub.add_parser("dag", help="the pipeline's jobs and their params keys; write or check dvc.yaml",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--write", metavar="DVC_YAML", help="write the DVC pipeline for --params here")
    what.add_argument("--check", metavar="DVC_YAML", help="exit 2 unless this file is what --write would write")
    p.set_defaults(func=main)


def add_check_outputs_subparser(sub) -> None:
    from dlwt.params import add_arguments

    p = sub.add_parser("check-outputs", help="exit 2 unless every output of the pipeline exists and is non-empty")
    add_arguments(p)

    def run(args) -> int:
        from dlwt.params import load

        print(f"dlwt check-outputs: {len(check_outputs(load(args.params, args.overlay)))} files, all non-empty")
        return 0

    p.set_defaults(func=run)
