"""Using a trained checkpoint: ``mritumor evaluate`` (:mod:`.evaluate`) and ``mritumor predict``
(:mod:`.predict`: :mod:`.inputs` → :mod:`.predictor` → :mod:`.outputs`, :mod:`.explanations`).
Networks come from :mod:`mritumor.models.loading`. The submodules are imported on demand, so
that ``predict`` pays only for what it uses; none imports Lightning.
"""
