"""`dlwt <stage> ...`: one subcommand per pipeline stage (also `python -m dlwt`).

    dlwt demo --epochs 8
    dlwt --help
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from dlwt import demo

    parser = argparse.ArgumentParser(prog="dlwt", description="Deep Learning without Weight Transport")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    demo.add_subparser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
