"""Peers for the arena tests: LMArena's released ``arena-rank`` (imported only when installed)
and an independent, formula-level statement of FastChat's ``compute_style_control`` objective
(FastChat's style control is not in any PyPI ``fschat`` release, so its objective is written
here from its definition, not from its code).

Also a generator of small Chatbot-Arena battle records with ``conv_metadata`` style counts."""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import multiprocessing
import os

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

# JAX: one thread (the test machine's cores are shared); set before arena-rank imports jax
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1")

STYLE_KEYS = ("sum_assistant_tokens", "header_count", "list_count", "bold_count")


def battle_records(n_models=6, n_votes=600, seed=0, tie_rate=0.1):
    """Chatbot-Arena battles: model strengths, style counts that differ between models (so
    style and model identity are correlated) and a style effect on who wins."""
    rng = np.random.default_rng(seed)
    names = [f"model-{chr(97 + i)}" for i in range(n_models)]
    strength = np.linspace(-1.0, 1.0, n_models)
    verbosity = rng.uniform(0.5, 2.0, n_models)
    a = rng.integers(0, n_models, n_votes)
    b = (a + rng.integers(1, n_models, n_votes)) % n_models
    records = []
    for k in range(n_votes):
        meta, side_counts = {}, {}
        for side, m in (("a", a[k]), ("b", b[k])):
            tokens = int(rng.poisson(300 * verbosity[m]))
            headers = rng.poisson(verbosity[m], 3)
            lists = rng.poisson(2 * verbosity[m], 2)
            bold = rng.poisson(verbosity[m], 2) * (rng.random() < 0.7)
            meta[f"sum_assistant_{side}_tokens"] = tokens
            meta[f"context_{side}_tokens"] = int(rng.integers(10, 2000))
            meta[f"header_count_{side}"] = {f"h{i + 1}": int(v) for i, v in enumerate(headers)}
            meta[f"list_count_{side}"] = {"ordered": int(lists[0]), "unordered": int(lists[1])}
            meta[f"bold_count_{side}"] = {"**": int(bold[0]), "__": int(bold[1])}
            side_counts[side] = (tokens, headers.sum(), lists.sum(), bold.sum())
        ta, tb = side_counts["a"][0], side_counts["b"][0]
        z = strength[a[k]] - strength[b[k]] + 1.5 * (ta - tb) / (ta + tb)
        winner = ("tie" if rng.random() < tie_rate else
                  "model_a" if rng.random() < expit(z) else "model_b")
        records.append({"question_id": f"q{k}", "model_a": names[a[k]], "model_b": names[b[k]],
                        "winner": winner, "conv_metadata": meta})
    return records


def style_counts(records, side):
    """``[N, 4]`` counts of :data:`STYLE_KEYS` (nested counts summed) for side ``a``/``b``."""
    out = np.empty((len(records), len(STYLE_KEYS)))
    for k, record in enumerate(records):
        meta = record["conv_metadata"]
        for f, key in enumerate(STYLE_KEYS):
            name = (f"sum_assistant_{side}_tokens" if key == "sum_assistant_tokens"
                    else f"{key}_{side}")
            value = meta[name]
            out[k, f] = sum(value.values()) if isinstance(value, dict) else value
    return out


def outcomes(records):
    return np.array([1.0 if r["winner"] == "model_a" else 0.0 if r["winner"] == "model_b"
                     else 0.5 for r in records])


def fastchat_style_reference(records, names):
    """The minimizer of FastChat's ``compute_style_control`` objective (reg 0.5), stated from
    its definition: ratings ``r`` in log10 units, logits ``ln(10) (r_a - r_b) + x^T gamma``,
    summed log-loss + ``0.25 (||r||^2 + ||gamma||^2)``, covariates ``(a - b) / (a + b + 1)``
    z-scored (ddof 0). Returns Elo ratings ``1000 + 400 r`` (by ``names``) and ``gamma``."""
    index = {m: i for i, m in enumerate(names)}
    a = np.array([index[r["model_a"]] for r in records])
    b = np.array([index[r["model_b"]] for r in records])
    y = outcomes(records)
    ca, cb = style_counts(records, "a"), style_counts(records, "b")
    raw = (ca - cb) / (ca + cb + 1)
    x = (raw - raw.mean(0)) / raw.std(0)
    n, ln10 = len(names), np.log(10.0)

    def loss(params):
        r, gamma = params[:n], params[n:]
        z = ln10 * (r[a] - r[b]) + x @ gamma
        value = -np.sum(y * log_expit(z) + (1 - y) * log_expit(-z)) + 0.25 * params @ params
        e = y - expit(z)
        grad = 0.5 * params
        grad[:n] -= ln10 * (np.bincount(a, e, n) - np.bincount(b, e, n))
        grad[n:] -= x.T @ e
        return value, grad

    res = minimize(loss, np.zeros(n + x.shape[1]), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-11, "ftol": 1e-15, "maxiter": 10_000})
    return 1000 + 400 * res.x[:n], res.x[n:]


def arena_rank_frame(records):
    """A pandas frame as LMArena's example prepares it for arena-rank: per feature the relative
    difference ``(a - b) / (a + b)`` (a zero total counts as 1), standardized."""
    import pandas as pd

    ca, cb = style_counts(records, "a"), style_counts(records, "b")
    total = ca + cb
    raw = (ca - cb) / np.where(total == 0, 1, total)
    frame = pd.DataFrame({"model_a": [r["model_a"] for r in records],
                          "model_b": [r["model_b"] for r in records],
                          "winner": [r["winner"] for r in records]})
    for f, key in enumerate(STYLE_KEYS):
        column = pd.Series(raw[:, f])
        frame[key] = (column - column.mean()) / column.std()
    return frame


# arena-rank's L-BFGS stops at a relative loss change of 1e-9 by default, up to ~0.01 Elo from
# the optimum on a few hundred votes: the tests ask it to converge (its own settings)
CONVERGED = {"ftol": 1e-14, "gtol": 1e-12}


def _arena_rank_style_here(records, ci_method="sandwich"):
    """arena-rank's contextual Bradley-Terry with its defaults (converged): dict name ->
    (rating, lower, upper) on the Elo scale, and the coefficients."""
    from arena_rank.models.contextual_bradley_terry import ContextualBradleyTerry
    from arena_rank.utils.data_utils import ContextualPairDataset

    dataset = ContextualPairDataset.from_pandas(arena_rank_frame(records),
                                                feature_cols=list(STYLE_KEYS))
    model = ContextualBradleyTerry(n_competitors=len(dataset.competitors),
                                   n_features=len(STYLE_KEYS), **CONVERGED)
    out = model.compute_ratings_and_cis(dataset, ci_method=ci_method)
    return _by_name(out), np.asarray(out["coeffs"])


def _arena_rank_bt_here(records, ci_method="sandwich"):
    """arena-rank's Bradley-Terry with its defaults (converged): dict name -> (rating, lower,
    upper)."""
    import pandas as pd
    from arena_rank.models.bradley_terry import BradleyTerry
    from arena_rank.utils.data_utils import PairDataset

    frame = pd.DataFrame({k: [r[k] for r in records] for k in ("model_a", "model_b", "winner")})
    dataset = PairDataset.from_pandas(frame)
    model = BradleyTerry(n_competitors=len(dataset.competitors), **CONVERGED)
    return _by_name(model.compute_ratings_and_cis(dataset, ci_method=ci_method))


def _by_name(out):
    return {m: (float(r), float(lo), float(hi)) for m, r, lo, hi in
            zip(out["competitors"], out["ratings"], out["rating_lower"], out["rating_upper"],
                strict=True)}


# arena-rank runs on JAX, which starts threads when it is imported; a process that later forks
# (prefkit's parallel validation, a fork-based pool in another test) can then deadlock. The peer
# therefore runs in ONE spawned worker process, reused by every test of the session, and JAX is
# never imported into the pytest process.
@functools.lru_cache(maxsize=1)
def _peer_worker() -> concurrent.futures.ProcessPoolExecutor:
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    atexit.register(pool.shutdown)
    return pool


def arena_rank_style(records, ci_method="sandwich"):
    """:func:`_arena_rank_style_here` in the spawned peer process."""
    return _peer_worker().submit(_arena_rank_style_here, records, ci_method).result()


def arena_rank_bt(records, ci_method="sandwich"):
    """:func:`_arena_rank_bt_here` in the spawned peer process."""
    return _peer_worker().submit(_arena_rank_bt_here, records, ci_method).result()
