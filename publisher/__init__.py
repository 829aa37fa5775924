"""publisher: turn a mergekit SLERP recipe into a published Hugging Face model."""

__version__ = "0.1.0"
