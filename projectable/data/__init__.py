"""Datasets: raw records, tasks, tokenised splits and the training input pipeline.

``load(config.data)`` opens the dataset it names (``sources``) and tokenises it
(``tokens``) into a ``TaskData``; ``pipeline`` turns that into task-grouped batches.
"""

from projectable.data.records import ArraySource, Source, Split, TaskData
from projectable.data.sources import load
from projectable.data.tasks import parse_classes, parse_tasks
from projectable.data.tokens import eval_arrays, preprocess, quantise, tokenise

__all__ = [
  "ArraySource",
  "Source",
  "Split",
  "TaskData",
  "eval_arrays",
  "load",
  "parse_classes",
  "parse_tasks",
  "preprocess",
  "quantise",
  "tokenise",
]
