"""publisher: turn a mergekit SLERP recipe into a published Hugging Face model."""

from publisher.lazy_imports import defer

__version__ = "0.1.0"

# mergekit imports peft for LoRA parents only, which recipes cannot name: about 0.7 s of
# start-up in every process that imports mergekit (publisher.lazy_imports).
defer("peft")
