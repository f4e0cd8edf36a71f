"""``mritumor report``: one self-contained HTML page for one or more run folders."""

from __future__ import annotations

from mritumor.commands.common import add_command, flag

DESCRIPTION = """\
One HTML file summarising run folders: every run found in each RUN_DIR (train-hierarchical,
its --cv folds, train-multitask variants and --variant all, evaluate, pretrain, evaluate-ssl,
compare, explain, demo) gets a section with its metrics and 95 % intervals, CV means ± SD,
comparison tables, ROC/PR curves, confusion matrices, calibration, overlays, training curves,
predictions, split and configuration. Images are embedded (base64), the CSS is inline and there
is no script: the file opens offline, can be mailed and prints cleanly. Checkpoints are not read."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "report", "an offline HTML report of run folders", DESCRIPTION
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folder, or a folder holding runs (searched recursively)",
    )
    flag(parser, "--output", default="report.html", help="HTML file to write")
    flag(parser, "--title", default="mritumor report", help="title of the page")
    flag(
        parser,
        "--max_image_mb",
        type=float,
        default=5.0,
        help="images larger than this are not embedded (a note says so)",
    )
    flag(
        parser,
        "--max_figures",
        type=int,
        default=24,
        help="at most this many 'other figures' per run folder",
    )
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.errors import MritumorError
    from mritumor.report import Options, write_report

    if args.max_image_mb <= 0 or args.max_figures < 0:
        raise MritumorError("--max_image_mb must be positive and --max_figures at least 0")
    options = Options(
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
        max_gallery=args.max_figures,
        title=args.title,
    )
    path = write_report(args.run_dirs, args.output, options)
    print(f"report written to {path.resolve()}")
