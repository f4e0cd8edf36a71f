"""Augmentation: the settings and the per-slice transforms (:mod:`.transforms`), the one batched
pipeline (:mod:`.batch_augment`) and its tensor kernels (:mod:`.augment_ops`)."""
