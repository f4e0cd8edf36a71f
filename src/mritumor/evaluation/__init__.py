"""Evaluation library shared by every training command.

* ``metrics``: patient-level classification metrics with bootstrap intervals, cross-validation
  summaries.
* ``bootstrap``: the patient-clustered percentile bootstrap (``evaluate`` and ``compare``).
* ``stats``: paired tests for comparing models (McNemar, DeLong, Wilcoxon, Friedman, Holm).
* ``curves``: one-vs-rest ROC / precision-recall curves and confusion matrices (PNG + JSON).
* ``calibration``: top-label ECE/MCE, reliability diagrams, temperature scaling.
* ``segmentation``: per-slice Dice, IoU and HD95, per-patient means.
* ``conformal``, ``ood``, ``selective``, ``uncertainty``, ``state``: prediction sets,
  out-of-distribution scores, risk–coverage, and the state ``best.pt`` stores for them.

The package imports nothing itself: ``predict`` with a cached ONNX model uses the numpy-only
modules (``uncertainty``, ``ood``, ``conformal``, ``state``) without loading torch.

Labels equal to -1 mean "unknown" everywhere and are ignored; undefined values are ``None``
(JSON ``null``) in the returned dicts, NaN in arrays.
"""
