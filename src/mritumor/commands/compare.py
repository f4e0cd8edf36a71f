"""``mritumor compare``: paired statistical tests between runs on their shared test items."""

from __future__ import annotations

from mritumor.commands.common import add_command, flag

DESCRIPTION = """\
Compares two or more run folders (their predictions.csv) on the test items they all share:
exact McNemar (accuracy), DeLong per class (AUC), Wilcoxon signed-rank (per-patient Dice),
patient-clustered bootstrap intervals of every difference, and for three or more runs Friedman
tests with Holm-adjusted pairwise p-values. Writes comparison.json, comparison.csv,
comparison.md, dice_per_patient_boxplot.png and roc_overlay.png into --outdir."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "compare", "paired statistical comparison of runs", DESCRIPTION
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders holding predictions.csv (at least 2)"
    )
    flag(parser, "--outdir", required=True, help="folder for the comparison tables and plots")
    flag(
        parser,
        "--n_boot",
        type=int,
        default=2000,
        help="patient-clustered bootstrap resamples for the intervals",
    )
    flag(parser, "--seed", type=int, default=0, help="seed of the bootstrap resamples")
    flag(parser, "--alpha", type=float, default=0.05, help="significance level (intervals 1-alpha)")
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.compare import compare_runs, text_summary
    from mritumor.errors import MritumorError

    if len(args.runs) < 2:
        raise MritumorError("compare needs at least two run folders")
    report = compare_runs(args.runs, args.outdir, args.n_boot, args.seed, args.alpha)
    print(text_summary(report))
    files = ", ".join(sorted(report["files"].values()))
    print(f"results in {args.outdir}: {files}")
