"""`dlwt <stage> ...`: one subcommand per pipeline stage (also `python -m dlwt`).

    dlwt doctor --params params.yaml            # run first on a GPU node: checks, step times, GPU-hours
    dlwt acquire | extract | convert ...        # data: archives -> ImageFolder -> FFCV
    dlwt train --params params.yaml --arch resnet18 --rule kp --seed 0 --out results/imagenet/runs/resnet18-kp-s0
    dlwt evaluate ... --checkpoint .../final.pt --out results/imagenet/eval/resnet18-kp-s0.json
    dlwt report --params params.yaml            # results/<exp>/summary.*, paper/<exp>/
    dlwt params --overlay config/demo.yaml      # the merged, validated params (defaults filled in)
    dlwt dag --check dvc.yaml                   # the pipeline's jobs; dvc.yaml generated from them (--write)
    dlwt check-outputs --overlay config/ci.yaml # every output of the pipeline exists and is non-empty
    dlwt --help
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from dlwt import dag, doctor, dvc_yaml, evaluate, params, train
    from dlwt.data import stages

    parser = argparse.ArgumentParser(prog="dlwt", description="Deep Learning without Weight Transport",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    stages.add_subparsers(sub)
    train.add_subparser(sub)
    evaluate.add_subparser(sub)
    _add_report(sub)
    doctor.add_subparser(sub)
    params.add_subparser(sub)
    dvc_yaml.add_subparser(sub)
    dag.add_check_outputs_subparser(sub)
    return parser


def _add_report(sub) -> None:
    """`dlwt report`, or without the report extra (pandas, matplotlib, seaborn) a stub that says how to get it:
    a core install (`pip install dlwt`) runs every other stage."""
    try:
        from dlwt import report
    except ImportError as e:
        from dlwt.errors import DlwtError

        missing = e.name

        def need_extra(args):
            raise DlwtError(f"needs the report extra ({missing} is not installed): pip install 'dlwt[report]'")

        p = sub.add_parser("report", help="Table 1, figures and README (needs the report extra)")
        for flag in ("--params", "--overlay", "--results", "--paper"):  # accepted, so the error is the one below
            p.add_argument(flag, action="append")
        p.set_defaults(func=need_extra)
        return
    report.add_subparser(sub)


def main(argv=None) -> int:
    from dlwt.errors import DlwtError

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        return result if isinstance(result, int) else 0  # the data stages return what they wrote
    except DlwtError as e:  # bad input: one line naming the thing and the fix
        print(f"dlwt {args.stage}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
