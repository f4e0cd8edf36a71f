"""Data layer: readers → Catalog → split by patient → cache → datasets."""
