"""dvc.yaml from the DAG (dlwt.dag): the same jobs, one DVC stage each, and the plots and metrics DVC shows.

    dlwt dag --write dvc.yaml                              # the ImageNet experiment of params.yaml (committed)
    dlwt dag --overlay config/demo.yaml --write dvc.yaml   # any overlay: dvc.yaml + params.demo.yaml (its params)

With an overlay the merged params (defaults filled in) go to params.<exp>.yaml beside dvc.yaml and every stage
reads that file, so after `make demo` (or any `snakemake --configfile <overlay>`), `dvc commit -f` records the
finished pipeline and `dvc status` says it is up to date; `dvc exp run -S params.demo.yaml:train.lr=0.04` works.
Top-level plots compare the rules (one colour per rule, a panel per arch, a line per seed) from the DVCLive files
of every run; the per-layer series stay in DVCLive (outputs, not plots). The metrics DVC shows are the report's
flat summary (results/<exp>/metrics.json: per arch-rule top-1/top-5 error mean and sd, mean angle).
"""
from __future__ import annotations

import os

from dlwt import dag, layout
from dlwt.errors import DlwtError

HEADER = """\
# GENERATED from src/dlwt/dag.py and {params} by `{command}`: do not edit by hand
# (CI runs `dlwt dag --check dvc.yaml` on the committed one). Regenerate after editing model.archs/rules/seeds, exp
# or data.root/dataset/source. One stage per job, each with exactly the params keys it reads: DVC's foreach/matrix
# cannot vary params by item, and a wm run must depend on mirror.* while the other rules' runs must not. Data
# stages' outputs are not cached (ImageNet is too big for a remote); final.pt is.
"""
TEMPLATE = "dlwt_rules"  # .dvc/plots/dlwt_rules.json: colour by rule, a panel per arch (from each file's run id)
CURVES_TEMPLATE = "dlwt_curves"  # .dvc/plots/dlwt_curves.json: the same from curves.csv's <arch>-<rule> columns
# (DVCLive series under a run's dvclive/plots/metrics/, its column, the plot's y label)
COMPARISONS = (("val/top1_err.tsv", "top1_err", "top-1 test error (fraction)"),
               ("align/mean_angle_deg.tsv", "mean_angle_deg", "angle(B, W), mean over layers (deg)"),
               ("grad_align/mean_angle_deg.tsv", "mean_angle_deg",
                "angle(rule update, backprop gradient), mean over layers (deg)"))


def params_name(params: dict, overlays) -> str:
    """The params file dvc.yaml's stages read: params.yaml itself, or params.<exp>.yaml for an overlay."""
    return f"params.{layout.safe_name(params['exp'], 'exp')}.yaml" if overlays else "params.yaml"


def stages(params: dict, written: dict | None = None, params_file: str = "params.yaml") -> dict:
    """dvc.yaml's `stages:` mapping. `written`: the params file as written, before defaults are filled in; keys
    it lacks are left out (DVC stops on a params key missing from the file)."""
    written = params if written is None else written
    metrics, stages = str(layout.dvc_metrics(params)), {}
    for j in dag.jobs(params):
        outs = []
        for path in (p for p in j.outs if p != metrics):  # the metrics file is declared as metrics below
            if j.stage == "train" and path.endswith(".pt"):  # checkpoints are cached: `dvc push` backs them up
                outs.append(path)
            elif j.stage == "report":  # persist: DVC leaves the last good report in place while it reruns
                outs.append({path: {"cache": False, "persist": True}})  # (a failed report keeps paper/<exp>/)
            else:
                outs.append({path: {"cache": False}})
        keys = [k for k in j.keys if dag.present(written, k)]
        stage = {"cmd": j.command(params_file), "deps": [*j.deps, *j.code],
                 "params": keys if params_file == "params.yaml" else [{params_file: keys}], "outs": outs}
        if j.live:  # DVCLive's folder: appended to across a resume (persist); plots come from it at the top level
            outs.append({j.live: {"cache": False, "persist": True}})
        if j.stage == "report":
            stage["metrics"] = [{metrics: {"cache": False, "persist": True}}]
        stages[j.name] = stage
    return stages


def plots(params: dict) -> list:
    """The top-level plots: one per comparison the paper makes, every run's DVCLive series in it."""
    out = []
    runs = [layout.Run(layout.run_dir(params["exp"], run)) for run in layout.run_ids(params)]
    for series, column, label in COMPARISONS:
        out.append({label: {"template": TEMPLATE, "x": "step", "x_label": "training step", "y_label": label,
                            "y": {str(r.live_series(series)): column for r in runs}}})
    # the report's committed curves (mean over seeds per arch-rule): `dvc plots diff <rev>` compares commits,
    # which the DVCLive files (outputs kept in the workspace, not in git) cannot
    curves = str(layout.report_files(params)["curves.csv"])
    lines = [f"{a}-{r}" for a in params["model"]["archs"] for r in params["model"]["rules"]]
    out.append({curves: {"x": "epoch", "y": lines, "template": CURVES_TEMPLATE,
                         "y_label": "top-1 error (%), mean over seeds"}})
    return out


def render(params: dict, written: dict | None = None, params_file: str = "params.yaml",
           command: str = "dlwt dag --write dvc.yaml") -> str:
    import yaml

    body = {"stages": stages(params, written, params_file), "plots": plots(params)}
    return HEADER.format(params=params_file, command=command) + yaml.safe_dump(
        body, sort_keys=False, width=116, default_flow_style=None)


def main(args) -> int:
    from dlwt.params import load, read_merged

    params, written = load(args.params, args.overlay), read_merged(args.params, args.overlay)
    target = args.write or args.check
    if target is None:
        for j in dag.jobs(params):
            print(f"{j.name}\n    {j.command(args.params)}\n    params: {', '.join(j.keys) or '-'}")
        return 0
    pfile = params_name(params, args.overlay)
    command = " ".join(["dlwt dag", *(f"--overlay {o}" for o in args.overlay), f"--write {target}"])
    # an overlay's params file is written whole (defaults filled in), so every key a stage reads is in it
    text = render(params, params if args.overlay else written, pfile, command)
    if args.write:
        import yaml

        from dlwt.atomic import atomic_write

        files = {args.write: text}
        if args.overlay:
            files[os.path.join(os.path.dirname(args.write), pfile)] = (
                f"# GENERATED by `{command}`: the merged params dvc.yaml's stages read (edit the overlay, or set "
                f"a value with `dvc exp run -S {pfile}:train.lr=0.04`)\n" + yaml.safe_dump(params, sort_keys=False))
        for path, data in files.items():
            atomic_write(path, data)
        print(f"dlwt dag: wrote {', '.join(files)} ({len(dag.jobs(params))} stages reading {pfile})")
        return 0
    try:
        current = open(args.check).read()
    except OSError as e:
        raise DlwtError(f"{args.check}: cannot read ({e.strerror}); run `{command}`") from None
    if current != text:
        raise DlwtError(f"{args.check} is not what {args.params} generates: run `{command}` and commit it")
    print(f"dlwt dag: {args.check} is up to date")
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
