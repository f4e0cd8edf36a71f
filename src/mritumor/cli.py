"""The ``mritumor`` command line. Thin: parses arguments, calls the API, prints results.

Each command family lives in :mod:`mritumor.commands` and registers its own sub-parser, so
adding a command touches one new module and the list below.
"""

from __future__ import annotations

import argparse
import sys

from mritumor import __version__
from mritumor.commands import (
    adapt,
    common,
    compare,
    data,
    demo,
    evaluate,
    explain,
    export,
    fit_uncertainty,
    hierarchical,
    multitask,
    predict,
    pretrain,
    recipes,
    report,
    serve,
)

COMMAND_MODULES = [
    data,
    demo,
    pretrain,
    hierarchical,
    multitask,
    evaluate,
    predict,
    export,
    fit_uncertainty,
    adapt,
    explain,
    compare,
    report,
    recipes,
    serve,
]


def build_parser() -> argparse.ArgumentParser:
    return common.build_command_parser(COMMAND_MODULES, version=__version__)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return common.run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
