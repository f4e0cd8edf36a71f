"""The ``mritumor`` command line. Thin: parses arguments, calls the API, prints results.

Each command family lives in :mod:`mritumor.commands` and registers its own sub-parser, so
adding a command touches one new module and the list below.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mritumor import __version__
from mritumor.commands import (
    common,
    compare,
    data,
    demo,
    evaluate,
    explain,
    export,
    hierarchical,
    multitask,
    predict,
    pretrain,
    recipes,
    report,
    serve,
)
from mritumor.errors import MritumorError

COMMAND_MODULES = [
    data,
    demo,
    pretrain,
    hierarchical,
    multitask,
    evaluate,
    predict,
    export,
    explain,
    compare,
    report,
    recipes,
    serve,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mritumor",
        description="Brain-MRI tumour analysis: data, pretraining, classification, segmentation.",
        formatter_class=common.Formatter,
    )
    parser.add_argument("--version", action="version", version=f"mritumor {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars"
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subcommands)
    for command_parser in _leaf_parsers(parser):
        command_parser.set_defaults(_command_parser=command_parser)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser):
    """Every parser that runs a command (the ones that set a handler)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                if child.get_default("handler") is not None:
                    yield child
                yield from _leaf_parsers(child)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = common.apply_config(parser, parser.parse_args(argv), argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(levelname)s %(name)s: %(message)s",
            force=True,
        )
        if args.quiet:  # Lightning logs through its own loggers and handlers
            for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
                logging.getLogger(name).setLevel(logging.WARNING)
        args.handler(args)
    except MritumorError as error:
        print(f"mritumor: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mritumor: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
