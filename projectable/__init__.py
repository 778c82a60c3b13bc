"""projectable: one-shot projection of a large Transformer into small task specialists."""

from projectable.specialist import Specialist, load_specialist

__all__ = ["Specialist", "load_specialist"]
