"""The example feedback files bundled with prefkit (``prefkit/examples``): one per format the
readers know, used by the guided tour (``prefkit demo``), the starter model's tokenizer and the
tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["EXAMPLES", "example_path"]


def example_path(name: str = "") -> Path:
    """Path of a bundled example file (or of the examples folder)."""
    return Path(str(resources.files("prefkit") / "examples" / name))


EXAMPLES = (
    "pairs.jsonl", "pairs_implicit.jsonl", "unpaired.jsonl", "rankings.jsonl", "ratings.jsonl",
    "helpsteer.jsonl", "alpaca_eval.json", "arena_battles.json", "rewardbench.jsonl",
    "feedback.jsonl",
)
"""The bundled example files, in the order the tour reads them."""
