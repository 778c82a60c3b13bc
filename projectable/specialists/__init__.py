"""Specialists: the standalone small-model artifact, its emission, export, scoring, pictures."""
