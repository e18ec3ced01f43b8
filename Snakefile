# The reproduction as one DAG: acquire -> extract -> convert -> train (arch x rule x seed) -> evaluate -> report.
#   snakemake --cores all                                    # ImageNet, from params.yaml
#   snakemake --cores all --configfile config/demo.yaml      # the demo on CPU, minutes
#   snakemake --profile profiles/slurm                       # a SLURM cluster
#   snakemake --configfile config/demo.yaml --report report.html   # after a run: Table 1, figures, README, costs
# Every job, its command, files and params keys come from src/dlwt/dag.py (dvc.yaml is generated from it too);
# this file adds what only Snakemake has: threads, GPUs, logs, benchmarks, the container and the HTML report.
# Code: each rule's command ends in a comment holding the hash of the source files its stage runs
# (dlwt.code_deps, computed from the imports), so Snakemake's `code` rerun trigger reruns a stage whose code
# changed, as `dvc repro` does; modules declared output-neutral there (progress, live logging) rerun nothing.
import os
import re
import sys

import dlwt.dag as dag
from dlwt import code_deps, layout
from dlwt.errors import DlwtError
from dlwt.params import complete, validate


def one_line(check, *args, **kwargs):
    """Bad params at parse time: the one-line message and exit code 2, as the dlwt CLI (no traceback)."""
    try:
        return check(*args, **kwargs)
    except DlwtError as e:
        print(f"dlwt: {e}", file=sys.stderr)
        os._exit(2)  # SystemExit would be caught and printed with a traceback by Snakemake


# Snakemake 9's `--list-changes params` lists one output of every job, changed or not: ParamsChange iterates its
# files even when it holds no change (the iteration added by snakemake PR #3313 for issue #3288), so `snakemake
# -R $(snakemake --lc params)` would rerun everything. Iterate the files of a real change only, as `-n` judges.
from snakemake.persistence import ParamsChange  # noqa: E402

ParamsChange.__iter__ = lambda self: iter(self.files if self else ())


configfile: "params.yaml"
config.update(complete(config))  # keys the files leave out take the defaults of src/dlwt/params_schema.yaml
one_line(validate, config, "params.yaml + --configfile overlays")  # names the key and what it allows

JOBS = {(j.stage, j.run): j for j in dag.jobs(config)}
RUNS = layout.run_ids(config)
EXP, DATASET, IMAGE = config["exp"], config["data"]["dataset"], config["container"]
# Jobs read the merged params (params.yaml + every --configfile) from one file named by its content; rules'
# commands name it only as $DLWT_PARAMS, so adding an overlay that changes nothing changes no command and
# reruns nothing. Each rule's `params:` holds the values of the keys it reads: editing one reruns its jobs.
os.environ["DLWT_PARAMS"] = one_line(dag.params_file, config)  # e.g. .snakemake/dlwt is a file


envvars:
    "DLWT_PARAMS",  # passed on to cluster jobs by Snakemake


PARAMS = '"$DLWT_PARAMS"'
WORKERS = max(1, config["data"]["num_workers"])  # loader/convert workers (0 = in the main process: 1 CPU)
CPU = config["train"]["device"] == "cpu"
RUN = layout.Run(layout.run_dir(EXP, "{run}"))  # a run folder's files, as patterns of the {run} wildcard


def J(stage, run=None):
    return JOBS[stage, run]


def keys(stage):
    """`params: keys=...` of a rule: the values of the params keys its job reads (a Snakemake rerun trigger)."""
    return lambda w: J(stage, w.get("run")).values(config)


def command(stage):
    return lambda w: J(stage, w.get("run")).command(PARAMS)


def shell_line(stage, cmd):
    """The rule's shell command: `cmd`, its log, and the hash of its stage's code (a comment: the code trigger)."""
    return f"{cmd} > {{log}} 2>&1  # code {code_deps.stage_hash(stage)}"


def reported(path):
    """A report output: updated in place (Snakemake keeps the last good file while the job runs and restores it
    when the job fails, where it would delete it: paper/<exp>/ is committed), and marked for `snakemake
    --report`: Table 1, the README with the verdicts, the figures."""
    path = update(str(path))
    if path.endswith(".png"):
        return report(path, category="Figures", labels={"figure": os.path.basename(path)[:-4]})
    if path.endswith(("table1.md", "README.md", "summary.csv")):
        return report(path, category="Table 1 and verdicts", labels={"file": os.path.basename(path)})
    return path


report: "paper/report.rst"  # the first page of `snakemake --report report.html`


wildcard_constraints:
    run="|".join(re.escape(r) for r in RUNS),


onstart:
    # no ImageNet archives, or --sdm apptainer without the image: stop before any job, saying what to do
    # (raised, not one_line: Snakemake holds its locks here and must release them)
    dag.preflight(config, container_method="apptainer" in str(workflow.deployment_settings.deployment_method).lower())


rule all:
    input:
        J("report").outs,
    default_target: True


rule acquire:
    output:
        J("acquire").outs,
    params:
        deps=keys("acquire"),
    log:
        f"logs/{DATASET}/acquire.log",
    benchmark:
        f"logs/{DATASET}/benchmarks/acquire.tsv"
    container:
        IMAGE
    shell:
        shell_line("acquire", J("acquire").command(PARAMS))


rule extract:
    input:
        J("extract").deps,
    output:
        directory(J("extract").outs[0]),
    params:
        deps=keys("extract"),
    log:
        f"logs/{DATASET}/extract.log",
    benchmark:
        f"logs/{DATASET}/benchmarks/extract.tsv"
    container:
        IMAGE
    shell:
        shell_line("extract", J("extract").command(PARAMS))


rule convert:
    input:
        J("convert").deps,
    output:
        J("convert").outs,
    params:
        deps=keys("convert"),
    threads: WORKERS  # FFCV's writer processes; Snakemake caps threads at --cores
    log:
        f"logs/{DATASET}/convert.log",
    benchmark:
        f"logs/{DATASET}/benchmarks/convert.tsv"
    container:
        IMAGE
    shell:
        shell_line("convert", J("convert").command(PARAMS))


rule train:
    input:
        lambda w: J("train", w.run).deps,
    output:
        # the same as dag.jobs' (a test compares them): metrics.jsonl, config.json, checkpoints/final.pt (last)
        str(RUN.final),
        str(RUN.metrics),
        str(RUN.config),
    params:
        deps=keys("train"),
        cmd=command("train"),
    # loader workers for each of train.gpus ranks; Snakemake caps threads at --cores (a cluster: --max-threads),
    # and dlwt train caps its workers at the CPUs the job may use
    threads: WORKERS * config["train"]["gpus"]
    resources:
        gpu=0 if CPU else config["train"]["gpus"],
    log:
        f"logs/{EXP}/train/{{run}}.log",
    benchmark:
        f"logs/{EXP}/benchmarks/train/{{run}}.tsv"
    container:
        IMAGE
    shell:
        shell_line("train", "{params.cmd}")


rule evaluate:
    input:
        lambda w: J("evaluate", w.run).deps,
    output:
        str(layout.eval_path(EXP, "{run}")),
    params:
        deps=keys("evaluate"),
        cmd=command("evaluate"),
    threads: WORKERS
    resources:
        gpu=0 if CPU else 1,
    log:
        f"logs/{EXP}/evaluate/{{run}}.log",
    benchmark:
        f"logs/{EXP}/benchmarks/evaluate/{{run}}.tsv"
    container:
        IMAGE
    shell:
        shell_line("evaluate", "{params.cmd}")


rule report:
    input:
        J("report").deps,
    output:
        [reported(f) for f in J("report").outs],
    params:
        deps=keys("report"),
    log:
        f"logs/{EXP}/report.log",
    container:
        IMAGE
    shell:
        shell_line("report", J("report").command(PARAMS))
