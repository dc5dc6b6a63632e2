"""The peer side of the arena benches: LMArena's released ``arena-rank`` end to end, in its own
process, from a Parquet battle file: read, build its dataset, fit, intervals. Prints one JSON
line (ratings and bounds on the Elo scale by model, the style coefficients, in-process stage
times). prefkit is not imported here.

    python bench/_arena_rank_child.py FILE --ci sandwich|bootstrap [--rounds 100] [--style]
                                      [--converged]

Style features are prepared as LMArena's example notebook for arena-rank prepares them (its
``add_style_feature_cols``: per feature ``(a - b) / (a + b)``, a zero total counting as 1,
standardized), with columnar pyarrow/pandas operations instead of its per-row ``apply``.
arena-rank's bootstrap runs a ``multiprocessing`` pool, which deadlocks under the default
fork start method once JAX has started its threads: the start method here is spawn.
``--converged`` tightens its L-BFGS tolerances (its own settings) for agreement checks.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np

# Chatbot Arena's style features (LMArena's example): the conv_metadata key without the side
FEATURES = ("sum_assistant_tokens", "header_count", "list_count", "bold_count")
CONVERGED = {"ftol": 1e-14, "gtol": 1e-12, "max_iter": 10_000}


def _side_column(frame, feature: str, side: str):
    """Per-vote count of ``feature`` for ``side``: the column itself, or the sum of the nested
    counts (``header_count_a.h1`` ...)."""
    key = (f"sum_assistant_{side}_tokens" if feature == "sum_assistant_tokens"
           else f"{feature}_{side}")
    prefix = f"conv_metadata.{key}"
    parts = [c for c in frame.columns if c == prefix or c.startswith(prefix + ".")]
    return frame[parts].sum(axis=1)


def read_battles(path: str, style: bool):
    """pandas frame with model_a, model_b, winner (+ the standardized style features)."""
    import pyarrow.parquet as pq

    columns = ["model_a", "model_b", "winner"] + (["conv_metadata"] if style else [])
    table = pq.read_table(path, columns=columns)
    while any(str(f.type).startswith("struct") for f in table.schema):
        table = table.flatten()
    frame = table.to_pandas()
    for column in ("model_a", "model_b", "winner"):
        frame[column] = frame[column].astype(str)
    if style:
        for feature in FEATURES:
            count_a, count_b = _side_column(frame, feature, "a"), _side_column(frame, feature,
                                                                               "b")
            total = (count_a + count_b).replace(0, 1)
            raw = (count_a - count_b) / total
            frame[feature] = (raw - raw.mean()) / raw.std()
        frame = frame[["model_a", "model_b", "winner", *FEATURES]]
    return frame


def build(frame, style: bool):
    """arena-rank's dataset and model with its defaults."""
    if style:
        from arena_rank.models.contextual_bradley_terry import ContextualBradleyTerry
        from arena_rank.utils.data_utils import ContextualPairDataset

        dataset = ContextualPairDataset.from_pandas(frame, feature_cols=list(FEATURES))
        return dataset, lambda **kw: ContextualBradleyTerry(
            n_competitors=len(dataset.competitors), n_features=len(FEATURES), **kw)
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    dataset = PairDataset.from_pandas(frame)
    return dataset, lambda **kw: BradleyTerry(n_competitors=len(dataset.competitors), **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--ci", choices=("sandwich", "bootstrap"), default="sandwich")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--style", action="store_true")
    parser.add_argument("--converged", action="store_true")
    args = parser.parse_args()
    multiprocessing.set_start_method("spawn", force=True)
    stages = {}
    start = time.perf_counter()
    frame = read_battles(args.path, args.style)
    stages["read_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset, make_model = build(frame, args.style)
    stages["dataset_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    model = make_model(**(CONVERGED if args.converged else {}))
    out = model.compute_ratings_and_cis(dataset, ci_method=args.ci,
                                        num_bootstrap=args.rounds)
    ratings = np.asarray(out["ratings"])  # JAX is asynchronous: wait for the result
    stages["fit_and_ci_seconds"] = time.perf_counter() - start
    result = {
        "models": list(out["competitors"]),
        "rating": ratings.tolist(),
        "lower": np.asarray(out["rating_lower"]).tolist(),
        "upper": np.asarray(out["rating_upper"]).tolist(),
        "coefficients": np.asarray(out["coeffs"]).tolist() if "coeffs" in out else None,
        "stages": {k: round(v, 3) for k, v in stages.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
