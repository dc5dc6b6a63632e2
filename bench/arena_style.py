"""Style-controlled Bradley-Terry with 95% intervals (sandwich, and 100 bootstrap rounds) from
one Parquet file of 1,000,000 votes among 100 models: prefkit vs LMArena's arena-rank, end to
end.

The file has Chatbot Arena's layout: ``conv_metadata`` structs with per-side counts of response
tokens, markdown headers (h1-h6), list items (ordered, unordered) and bold spans, plus the
context length (not a covariate); every model has its own verbosity, and the winner depends on
the ratings and on the style differences (``bench/_arena_data.py``). Each side runs in a fresh
process from the file -- process start, read, style features, fit, intervals:
``prefkit arena rank FILE --style-control --ci sandwich|bootstrap`` (its default convention,
arena-rank's; it also computes the uncontrolled leaderboard and its intervals) against
arena-rank 0.1.1 (``ContextualPairDataset.from_pandas`` + ``ContextualBradleyTerry`` with their
defaults, the features prepared as LMArena's example notebook prepares them; bootstrap pool
under spawn, see ``_arena_rank_child.py``). Agreement (``_arena_race.py``): style-controlled
ratings within 0.01 Elo of arena-rank's converged optimum, sandwich widths within 2%, bootstrap
bounds within 2% on arena-rank's own resamples.

    python bench/arena_style.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _arena_data import STYLE_EFFECT, write_battles  # noqa: E402
from _arena_race import GOAL, race, summary  # noqa: E402
from _common import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20k votes, 20 models, 4 bootstrap rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n_items, n_votes, rounds = (20, 20_000, 4) if args.quick else (100, 1_000_000, 100)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "votes.parquet"
        write_battles(path, n_items, n_votes, style=True)
        runs = race(path, rounds=rounds, style=True,
                    repeats={"sandwich": 3, "bootstrap": 1} if args.quick else None)
    result = {
        "bench": "arena_style", "votes": n_votes, "models": n_items,
        "features": ["sum_assistant_tokens", "header_count", "list_count", "bold_count"],
        "true_style_effects_per_sd": STYLE_EFFECT, "bootstrap_rounds": rounds,
        **summary(runs), "runs": runs, "goal": GOAL, "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
