"""Experiments: one run end to end, compared arms, FLOPs frontiers and memory plans."""
