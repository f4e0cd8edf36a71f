"""Catalog → training-ready data: patient-level splits (:mod:`.splits`), the preprocessing cache
(:mod:`.cache`, with its intensity window in :mod:`.intensity`), the label space
(:mod:`.labels`), torch datasets (:mod:`.datasets`), device-resident loaders
(:mod:`.device_data`), the choice between them and the ``--augment`` presets
(:mod:`.fast_path`), and all of it in one call (:mod:`.prepare`)."""
