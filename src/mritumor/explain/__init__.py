"""Where the model looked: attribution maps (pixel occlusion, Grad-CAM, slice occlusion), their
agreement with tumour masks, and the ``mritumor explain`` pipeline (:mod:`mritumor.explain.run`,
imported on demand: it pulls in data reading and plotting)."""

from mritumor.explain.attribution import (
    gradcam_maps,
    hierarchical_slice_classifier,
    last_conv_block,
    occlusion_map,
    slice_occlusion,
)
from mritumor.explain.metrics import (
    mask_share,
    pointing_game_hit,
    share_in_mask,
    summarise_scores,
)

__all__ = [
    "gradcam_maps",
    "hierarchical_slice_classifier",
    "last_conv_block",
    "mask_share",
    "occlusion_map",
    "pointing_game_hit",
    "share_in_mask",
    "slice_occlusion",
    "summarise_scores",
]
