"""Datasets onto disk: downloading public ones (:mod:`.download`), unpacking archives safely
(:mod:`.archives`), converting any readable source to a shareable folder tree
(:mod:`.convert`) and drawing synthetic cohorts (:mod:`.synthetic`)."""
