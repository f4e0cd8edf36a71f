"""``mritumor demo``."""

from __future__ import annotations

from pathlib import Path

from mritumor.commands.common import add_command, build_command_parser, flag, run_command


def register(subcommands) -> None:
    demo = add_command(
        subcommands, "demo", "run the pipeline end to end on generated (or your) data"
    )
    flag(demo, "--outdir", default="runs/demo", help="where the demo writes its data and results")
    flag(demo, "--data_root", default=None, help="run on this dataset instead of generated data")
    flag(demo, "--quick", action="store_true", help="a few epochs only (a smoke test of the chain)")
    demo.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.demo import run_demo

    run_demo(Path(args.outdir), args.data_root, quick=args.quick, run=run_as_typed)


def run_as_typed(argv: list[str]) -> int:
    """``mritumor ARGV`` for the commands the demo chains: parsed by the commands' own parsers
    (flags, --config, --recipe) and run by their handlers, exit status as the CLI's."""
    from mritumor.commands import compare, data, explain, hierarchical, multitask, pretrain, report

    parser = build_command_parser(
        [data, pretrain, hierarchical, multitask, explain, compare, report]
    )
    return run_command(parser, argv)
