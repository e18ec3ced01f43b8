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
import importlib
import sys

# stage -> (module, the function there that declares its flags, the line `dlwt --help` shows). The parser
# imports a stage's module only once that stage is chosen (_LazyStages): `dlwt params` or a mistyped flag
# must not spend 36-87 s (under load) importing torch, torchvision, pandas and seaborn for stages not run.
STAGES = {
    "acquire": ("dlwt.data.stages", "add_subparsers", "check or download the ILSVRC2012 archives (or write synthetic ones)"),
    "extract": ("dlwt.data.stages", "add_subparsers", "archives -> data/<dataset>/images/{train,val}/<class>/"),
    "convert": ("dlwt.data.stages", "add_subparsers", "ImageFolder -> data/<dataset>/ffcv/{train,val}.beton"),
    "train": ("dlwt.train", "add_subparser", "train one (arch, rule, seed); resumes from <out>/checkpoints/last.pt"),
    "evaluate": ("dlwt.evaluate", "add_subparser", "checkpoint or weights -> eval JSON (top-1/top-5 error, alignment)"),
    "report": ("dlwt.cli", "_add_report", "Table 1, figures and README (with verdicts) from an experiment"),
    "doctor": ("dlwt.doctor", "add_subparser", "check this machine against params and time every rule (run first)"),
    "params": ("dlwt.params", "add_subparser", "print the merged, validated params (YAML) that every stage reads"),
    "dag": ("dlwt.dvc_yaml", "add_subparser", "the pipeline's jobs and their params keys; write or check dvc.yaml"),
    "check-outputs": ("dlwt.dag", "add_check_outputs_subparser",
                      "exit 2 unless every output of the pipeline exists and is non-empty"),
}


class _Declare:
    """What a module's add_subparser(sub) is handed: add_parser returns the stage's placeholder parser (made
    with its help line up front) with the module's description and formatter, so the module declares its
    flags into it unchanged."""

    def __init__(self, parsers: dict):
        self.parsers = parsers

    def add_parser(self, name, **kw):
        p = self.parsers[name]
        for key in ("description", "epilog", "formatter_class"):
            if key in kw:
                setattr(p, key, kw[key])
        return p


class _LazyStages(argparse._SubParsersAction):
    """Subcommands whose flags are declared (their module imported) when the stage is chosen."""

    declared: set

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0]
        if name in STAGES and name not in self.declared:
            module, function, _ = STAGES[name]
            try:
                declare = getattr(importlib.import_module(module), function)
            except ModuleNotFoundError as e:  # a library-only install (`pip install dlwt`): say which extra
                if e.name is None or e.name.split(".")[0] == "dlwt":
                    raise
                parser.exit(2, f"dlwt {name}: needs {e.name}, which is not installed: pip install 'dlwt[cli]' "
                               "(the stages' extra; 'dlwt[pipeline]' adds Snakemake and DVC)\n")
            declare(_Declare(self._name_parser_map))
            self.declared.update(n for n, spec in STAGES.items() if spec[:2] == (module, function))
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlwt", description="Deep Learning without Weight Transport",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.register("action", "lazy_stages", _LazyStages)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE", action="lazy_stages")
    sub.declared = set()
    for name, (_, _, help_line) in STAGES.items():
        sub.add_parser(name, help=help_line)
    return parser


def _add_report(sub) -> None:
    """`dlwt report`, or without the report extra (pandas, matplotlib, seaborn) a stub that says how to get it:
    `pip install 'dlwt[cli]'` runs every other stage."""
    try:
        from dlwt import report
    except ImportError as e:
        from dlwt.errors import DlwtError

        missing = e.name

        def need_extra(args):
            raise DlwtError(f"needs the report extra ({missing} is not installed): pip install 'dlwt[report]'")

        p = sub.add_parser("report")
        for flag in ("--params", "--overlay", "--results", "--paper"):  # accepted, so the error is the one below
            p.add_argument(flag, action="append")
        p.set_defaults(func=need_extra)
        return
    report.add_subparser(sub)


def main(argv=None) -> int:
    from dlwt.errors import DlwtError

    args = None
    try:
        args = build_parser().parse_args(argv)
        result = args.func(args)
        return result if isinstance(result, int) else 0  # the data stages return what they wrote
    except DlwtError as e:  # bad input: one line naming the thing and the fix
        print(f"dlwt {args.stage}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C (at start-up, in a data stage, a second one in training): one line
        stage = f" {args.stage}" if args is not None else ""
        print(f"dlwt{stage}: interrupted (Ctrl-C); rerun the same command to go on", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended


if __name__ == "__main__":
    sys.exit(main())
