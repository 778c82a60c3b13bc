"""projectable: one-shot projection of a large Transformer into small task specialists."""

from projectable.specialists.artifact import Specialist, load_specialist

__all__ = ["Specialist", "load_specialist"]
