"""Reflective-phrase analysis settings."""

from pathlib import Path

from pydantic import Field, PositiveInt

from searchr1.schema import Section


class ReflectionConfig(Section):
    lexicon_file: Path | None = None  # None = the shipped default lexicon (searchr1/reflection/default_lexicon.txt)
    bootstrap_samples: PositiveInt = 2000
    confidence: float = Field(0.95, gt=0, lt=1)
    n_examples: PositiveInt = 5
    # fewer checkpoints (or training steps) than this: the numbers are shown, no conclusion is drawn
    min_points: int = Field(5, ge=3)
