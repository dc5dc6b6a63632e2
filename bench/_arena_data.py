"""Battle files for the arena benches: Chatbot Arena's Parquet layout (``model_a``,
``model_b``, ``winner``; with ``--style`` a ``conv_metadata`` struct of per-side counts:
``sum_assistant_a_tokens``, ``header_count_a: {h1..h6}``, ``list_count_a: {ordered,
unordered}``, ``bold_count_a: {**, __}``, ``context_a_tokens``, and the ``_b`` side), written
column by column with pyarrow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit

WINNERS = np.array(["model_a", "model_b", "tie", "tie (bothbad)"])
STYLE_EFFECT = {"tokens": 0.6, "headers": 0.1, "lists": 0.15, "bold": 0.05}


def _struct(fields: dict):
    import pyarrow as pa

    return pa.StructArray.from_arrays(
        [v if isinstance(v, pa.Array) else pa.array(v) for v in fields.values()],
        names=list(fields))


def write_battles(path: str | Path, n_models: int, n_votes: int, *, style: bool = False,
                  tie_rate: float = 0.05, seed: int = 0) -> dict:
    """Write the file; returns the true strengths. Model strengths ~ N(0, 1); every model has
    its own verbosity (style counts go with the model, as in the arena); the winner follows
    ``sigmoid(s_a - s_b + style effect)`` with ties (a fifth of them both-bad)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    strength = rng.normal(size=n_models)
    verbosity = np.exp(rng.normal(scale=0.4, size=n_models))
    a = rng.integers(0, n_models, n_votes)
    b = (a + rng.integers(1, n_models, n_votes)) % n_models
    z = strength[a] - strength[b]
    columns = {}
    if style:
        sides = {}
        for side, m in (("a", a), ("b", b)):
            v = verbosity[m]
            sides[side] = {
                "tokens": rng.poisson(300 * v),
                "headers": rng.poisson(0.3 * v[:, None], (n_votes, 6)),
                "lists": rng.poisson(1.5 * v[:, None], (n_votes, 2)),
                "bold": rng.poisson(0.8 * v[:, None], (n_votes, 2)),
                "context": rng.integers(10, 3000, n_votes),
            }
        for key, effect in STYLE_EFFECT.items():
            ca = sides["a"][key].reshape(n_votes, -1).sum(1)
            cb = sides["b"][key].reshape(n_votes, -1).sum(1)
            raw = (ca - cb) / np.maximum(ca + cb, 1)
            z = z + effect * (raw - raw.mean()) / max(raw.std(), 1e-12)
        meta = {}
        for side in ("a", "b"):
            c = sides[side]
            meta[f"sum_assistant_{side}_tokens"] = c["tokens"]
            meta[f"context_{side}_tokens"] = c["context"]
            meta[f"header_count_{side}"] = _struct({f"h{i + 1}": c["headers"][:, i]
                                                    for i in range(6)})
            meta[f"list_count_{side}"] = _struct({"ordered": c["lists"][:, 0],
                                                  "unordered": c["lists"][:, 1]})
            meta[f"bold_count_{side}"] = _struct({"**": c["bold"][:, 0],
                                                  "__": c["bold"][:, 1]})
        columns["conv_metadata"] = _struct(meta)
    win = rng.random(n_votes) < expit(z)
    tie = rng.random(n_votes) < tie_rate
    code = np.where(tie, np.where(rng.random(n_votes) < 0.2, 3, 2), np.where(win, 0, 1))
    names = np.array([f"model-{i:03d}" for i in range(n_models)])
    table = pa.table({"model_a": pa.array(names[a]).dictionary_encode(),
                      "model_b": pa.array(names[b]).dictionary_encode(),
                      "winner": pa.array(WINNERS[code]).dictionary_encode(), **columns})
    pq.write_table(table, path)
    return {"strength": strength, "names": names.tolist()}
