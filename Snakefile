# The reproduction as one DAG: acquire -> extract -> convert -> train (arch x rule x seed) -> evaluate -> report.
#   snakemake --cores all                                    # ImageNet, from params.yaml
#   snakemake --cores all --configfile config/demo.yaml      # the demo: digits on CPU, minutes
#   snakemake --profile profiles/slurm                       # a SLURM cluster
# Every rule only calls the `dlwt` CLI; the logic lives in src/dlwt (dvc.yaml runs the same commands).
import dlwt.pipeline as pipeline
from dlwt.params import validate

configfile: "params.yaml"
validate(config, "params.yaml + --configfile overlays")  # src/dlwt/params_schema.yaml: one line naming the key

P = pipeline.paths(config)
RUNS = pipeline.run_ids(config)
ARGS = f"--params params.yaml{pipeline.overlay_flags(workflow.overwrite_configfiles)}"
IMAGE = config["container"]


onstart:
    pipeline.preflight(config)  # no ImageNet archives: stop before any job, saying where they go


rule all:
    input:
        P["summary"],
        P["paper"],


rule acquire:
    output:
        P["acquired"],
    log:
        "logs/acquire.log",
    container:
        IMAGE
    shell:
        f"dlwt acquire {ARGS} > {{log}} 2>&1"


rule extract:
    input:
        P["acquired"],
    output:
        directory(P["images"]),
    log:
        "logs/extract.log",
    container:
        IMAGE
    shell:
        f"dlwt extract {ARGS} > {{log}} 2>&1"


rule convert:
    input:
        P["images"],
    output:
        P["train_beton"],
        P["val_beton"],
    threads: config["data"]["num_workers"]  # Snakemake caps threads at --cores
    log:
        "logs/convert.log",
    container:
        IMAGE
    shell:
        f"dlwt convert {ARGS} > {{log}} 2>&1"


rule train:
    input:
        P["train_beton"],
        P["val_beton"],
    output:
        f"{P['runs']}/{{arch}}-{{rule}}-s{{seed}}/checkpoints/final.pt",
        f"{P['runs']}/{{arch}}-{{rule}}-s{{seed}}/metrics.jsonl",
        f"{P['runs']}/{{arch}}-{{rule}}-s{{seed}}/config.json",
    wildcard_constraints:
        seed=r"\d+",
    resources:
        gpu=config["train"]["gpus"],
    threads: config["data"]["num_workers"]
    log:
        "logs/train/{arch}-{rule}-s{seed}.log",
    container:
        IMAGE
    shell:
        f"dlwt train {ARGS} --arch {{wildcards.arch}} --rule {{wildcards.rule}} --seed {{wildcards.seed}} "
        f"--out {P['runs']}/{{wildcards.arch}}-{{wildcards.rule}}-s{{wildcards.seed}} > {{log}} 2>&1"


rule evaluate:
    input:
        P["val_beton"],
        f"{P['runs']}/{{arch}}-{{rule}}-s{{seed}}/checkpoints/final.pt",
    output:
        f"{P['eval']}/{{arch}}-{{rule}}-s{{seed}}.json",
    wildcard_constraints:
        seed=r"\d+",
    resources:
        gpu=1 if config["train"]["gpus"] else 0,
    log:
        "logs/evaluate/{arch}-{rule}-s{seed}.log",
    container:
        IMAGE
    shell:
        f"dlwt evaluate {ARGS} --arch {{wildcards.arch}} --rule {{wildcards.rule}} --seed {{wildcards.seed}} "
        f"--checkpoint {P['runs']}/{{wildcards.arch}}-{{wildcards.rule}}-s{{wildcards.seed}}/checkpoints/final.pt "
        f"--out {P['eval']}/{{wildcards.arch}}-{{wildcards.rule}}-s{{wildcards.seed}}.json > {{log}} 2>&1"


rule report:
    input:
        expand(f"{P['eval']}/{{run}}.json", run=RUNS),
        expand(f"{P['runs']}/{{run}}/metrics.jsonl", run=RUNS),
    output:
        P["summary"],
        f"results/{config['exp']}/summary.csv",
        f"results/{config['exp']}/curves.csv",
        directory(P["paper"]),
    log:
        "logs/report.log",
    container:
        IMAGE
    shell:
        f"dlwt report {ARGS} > {{log}} 2>&1"
