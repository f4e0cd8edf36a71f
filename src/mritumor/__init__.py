"""mritumor: brain-MRI tumour analysis toolkit."""

__version__ = "0.1.0"
