"""Data layer, one sub-package per job (each imports only the ones listed before it):

* :mod:`~mritumor.data.reading`: files → one :class:`~mritumor.data.reading.catalog.Catalog`
  (decoding, one reader per source, several sources combined, ``data inspect``);
* :mod:`~mritumor.data.augment`: the augmentation ops, per slice or per batch;
* :mod:`~mritumor.data.loading`: catalog → patient-level split → cache → datasets and device
  loaders for training;
* :mod:`~mritumor.data.acquire`: datasets onto disk (download, unpack, convert, synthesise).
"""
