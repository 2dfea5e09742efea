"""The ``normkit`` command: ``normkit info``, ``normkit demo``, ``normkit bench``, ``normkit experiment``."""

import argparse
import sys


def _cmd_info(args):
    from ._info import format_info
    print(format_info())
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="normkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, threading layer, thread count, CUDA availability")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
