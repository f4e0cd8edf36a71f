"""``mritumor compare``: paired statistical comparison of two or more runs on shared test items.

Each run folder holds a ``predictions.csv`` (``mritumor train-hierarchical``: one row per
patient; ``mritumor train-multitask``: one row per slice, with ``image`` and ``dice``). The unit
of pairing is ``image`` when every run has that column, else ``patient_id`` (slice rows are then
aggregated to patients: mean class probabilities, prediction = their arg-max, mean Dice over the
slices where it is defined). Only units present in every run are compared; the others are
counted as dropped.

Tests, per pair of runs (A − B), and over all runs when there are three or more:

* accuracy (tumour type): exact McNemar on unit correctness; patient-clustered bootstrap
  interval of the accuracy difference.
* AUC: DeLong per class (one-vs-rest); macro AUC difference by the patient-clustered bootstrap
  (interval and a p-value by interval inversion).
* Dice: Wilcoxon signed-rank on per-patient mean Dice; bootstrap interval of the difference of
  mean per-patient Dice.
* three or more runs: Friedman on per-patient accuracy and on per-patient Dice; every pairwise
  p-value also gets a Holm-adjusted one (over the pairs, per test and per class).

Writes ``comparison.json``, ``comparison.csv`` (one row per pair × metric, plus Friedman rows),
``comparison.md``, ``dice_per_patient_boxplot.png`` and ``roc_overlay.png``.

Modules: ``runs`` (reading run folders, aligning them), ``analysis`` (the tests), ``report``
(``compare_runs``), ``tables`` (CSV / Markdown / terminal text) and ``plots``.
"""

from mritumor.compare.analysis import CI_METHOD, classification_analysis, dice_analysis
from mritumor.compare.plots import BOXPLOT_FILE, ROC_FILE, plot_dice_boxplot, plot_roc_overlay
from mritumor.compare.report import compare_runs
from mritumor.compare.runs import (
    PREDICTIONS,
    PROB_PREFIX,
    Aligned,
    Run,
    align,
    load_runs,
    read_run,
    run_names,
)
from mritumor.compare.tables import (
    CSV_COLUMNS,
    csv_rows,
    markdown,
    pairwise_table,
    summary_table,
    text_summary,
)

__all__ = [
    "BOXPLOT_FILE",
    "CI_METHOD",
    "CSV_COLUMNS",
    "PREDICTIONS",
    "PROB_PREFIX",
    "ROC_FILE",
    "Aligned",
    "Run",
    "align",
    "classification_analysis",
    "compare_runs",
    "csv_rows",
    "dice_analysis",
    "load_runs",
    "markdown",
    "pairwise_table",
    "plot_dice_boxplot",
    "plot_roc_overlay",
    "read_run",
    "run_names",
    "summary_table",
    "text_summary",
]
