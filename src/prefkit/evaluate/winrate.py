"""Win rates against a reference, with confidence intervals and length control.

Pure functions on numpy arrays. A *preference* is the outcome of one item (instruction) for
the evaluated model against the reference output on the same instruction::

    1    the model wins         0.5  tie          0    the model loses

or, for a weighted judge, the probability ``P(model beats reference)`` in ``[0, 1]``.
(AlpacaEval stores ``preference`` in ``[1, 2]``; pass ``preference - 1``.)

- :func:`win_rate`: the mean preference with a 95% CI (normal approximation or bootstrap).
- :func:`wilson_interval`: the Wilson score interval of a proportion (accuracies).
- :func:`length_controlled_win_rate`: AlpacaEval 2's length-controlled win rate, a logistic
  GLM with a length covariate (Dubois, Galambosi, Liang & Hashimoto 2024, "Length-Controlled
  AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, sparse, stats
from scipy.special import expit, log_expit

from prefkit.evaluate.calibration import as_finite, same_length

TIES = ("half", "drop", "loss")
CIS = ("normal", "bootstrap")


# --------------------------------------------------------------------------- helpers


def _as_preferences(values: Any, name: str = "preferences") -> np.ndarray:
    """1-D finite float array with every entry in ``[0, 1]``; the first bad index is named."""
    p = as_finite(values, name)
    bad = (p < 0) | (p > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {p[i]} is outside [0, 1]")
    return p


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(stats.norm.ppf(0.5 + level / 2))


def _bootstrap_means(p: np.ndarray, n_bootstrap: int, seed: int | None) -> np.ndarray:
    """Means of ``n_bootstrap`` resamples of ``p`` (with replacement, same size).

    Resamples *counts* of the distinct values (one multinomial draw per round), not rows,
    so the cost is ``O(n_bootstrap * n_distinct)``: 3 columns for discrete outcomes.
    """
    values, counts = np.unique(p, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(p), counts / len(p), size=n_bootstrap)
    return draws @ values / len(p)


# --------------------------------------------------------------------------- win rate


def win_rate(preferences: Any, *, ties: str = "half", ci: str = "normal", level: float = 0.95,
             n_bootstrap: int = 2000, seed: int | None = 0) -> dict[str, Any]:
    """Win rate of a model against a reference, with a confidence interval.

    ``preferences[i]`` in ``[0, 1]`` is item i's outcome (1 win, 0.5 tie, 0 loss) or the
    judge's probability that the model wins. The win rate is the mean::

        win_rate = (1/n) * sum_i p_i

    so a tie earns half a win (AlpacaEval's ``win_rate``; with probabilities this is the
    "weighted" win rate, not the share of items with ``p > 0.5``). ``ties`` treats an exact
    ``p = 0.5``: ``"half"`` (default, credit 0.5), ``"drop"`` (removed: ``n`` excludes them)
    or ``"loss"`` (credit 0, a strict win rate).

    Confidence interval at ``level`` (default 95%), clipped to ``[0, 1]``:

    - ``ci="normal"``: ``mean +- z * se`` with ``se = sd(p, ddof=1) / sqrt(n)`` and
      ``z = Phi^-1((1 + level) / 2)`` (1.96 at 95%); the Wald interval of the mean. It is
      degenerate (zero width) when all outcomes are equal.
    - ``ci="bootstrap"``: percentile interval of the mean over ``n_bootstrap`` resamples of
      the items with replacement, drawn with ``numpy.random.default_rng(seed)``; it agrees
      with the normal interval for large ``n``.

    Returns ``{"win_rate", "ci_low", "ci_high", "se", "n", "wins", "ties", "losses", "ci",
    "level"}``; ``wins``/``ties``/``losses`` count items with ``p > 0.5``, ``= 0.5``,
    ``< 0.5`` (before dropping ties; ``ties`` is the number of exact ties either way).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if ci not in CIS:
        raise ValueError(f"ci must be one of {CIS}, got {ci!r}")
    z = _z(level)
    p = _as_preferences(preferences)
    same_length(preferences=p)
    wins, n_ties, losses = int((p > 0.5).sum()), int((p == 0.5).sum()), int((p < 0.5).sum())
    if ties == "drop":
        p = p[p != 0.5]
        if len(p) == 0:
            raise ValueError("every item is a tie; nothing is left with ties='drop'")
    elif ties == "loss":
        p = np.where(p == 0.5, 0.0, p)
    n = len(p)
    mean = float(p.mean())
    se = float(p.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    if ci == "normal":
        lo, hi = (mean - z * se, mean + z * se) if n > 1 else (float("nan"), float("nan"))
    else:
        if n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
        means = _bootstrap_means(p, n_bootstrap, seed)
        alpha = (1 - level) / 2
        lo, hi = (float(q) for q in np.quantile(means, [alpha, 1 - alpha]))
    return {
        "win_rate": mean,
        "ci_low": None if np.isnan(lo) else float(np.clip(lo, 0.0, 1.0)),
        "ci_high": None if np.isnan(hi) else float(np.clip(hi, 0.0, 1.0)),
        "se": None if np.isnan(se) else se,
        "n": n,
        "wins": wins,
        "ties": n_ties,
        "losses": losses,
        "ci": ci,
        "level": level,
    }


def wilson_interval(successes: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (E. B. Wilson 1927, "Probable Inference,
    the Law of Succession, and Statistical Inference", JASA 22)::

        p = successes / n,   z = Phi^-1((1 + level) / 2)
        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    ``(centre - half, centre + half)``, inside ``[0, 1]``. Unlike the normal (Wald) interval it
    keeps a width at ``p = 0`` or ``1`` and stays in range for small ``n`` (0 of 10:
    ``[0, 0.278]``). ``successes`` may be fractional (ties counted half).
    """
    z = _z(level)
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not (math.isfinite(successes) and 0 <= successes <= n):
        raise ValueError(f"successes must be in [0, n = {n}], got {successes!r}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- logistic fit


def _fit_logistic(X: Any, y: np.ndarray, penalty: np.ndarray,
                  w0: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Ridge logistic regression with soft labels, no implicit intercept::

        minimise  sum_i [ softplus(eta_i) - y_i * eta_i ] + 1/2 * sum_j penalty_j * w_j^2,
        eta = X w

    which is the log-loss of ``y_i in [0, 1]`` (a soft label equals duplicating the row with
    label 1 at weight y and label 0 at weight 1 - y). ``X`` may be dense or scipy.sparse.
    Solved with L-BFGS-B and the analytic gradient ``X^T (sigmoid(eta) - y) + penalty * w``.
    """
    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        eta = X @ w
        loss = float(np.sum(-log_expit(-eta) - y * eta)) + 0.5 * float(penalty @ (w * w))
        grad = X.T @ (expit(eta) - y) + penalty * w
        return loss, np.asarray(grad, dtype=float)

    start = np.zeros(X.shape[1]) if w0 is None else w0
    res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                            options={"maxiter": 2000, "gtol": 1e-8, "ftol": 1e-13})
    return res.x, bool(res.success)


def _length_term(model_lengths: np.ndarray, reference_lengths: np.ndarray) -> tuple[np.ndarray,
                                                                                      float]:
    """``tanh(d / sd(d))`` with ``d = len_model - len_reference`` (not centred; ddof=0).

    Returns ``(term, sd)``; ``sd = 0`` (a constant difference: length is then confounded
    with the model term) gives a zero term.
    """
    d = model_lengths - reference_lengths
    sd = float(d.std())
    if sd == 0.0:
        return np.zeros_like(d), 0.0
    return np.tanh(d / sd), sd


def _instruction_index(instruction_ids: Any, n: int) -> tuple[np.ndarray, int]:
    if instruction_ids is None:
        return np.arange(n), n
    ids = np.asarray(instruction_ids)
    if ids.ndim != 1:
        raise ValueError(f"instruction_ids must be 1-D, got shape {ids.shape}")
    same_length(preferences=np.empty(n), instruction_ids=ids)
    _, index = np.unique(ids, return_inverse=True)
    return index, int(index.max()) + 1


def _fit_difficulty(blocks: list[tuple[np.ndarray, np.ndarray]], index: np.ndarray,
                    n_instructions: int, l2: float, difficulty_l2: float) -> tuple[np.ndarray,
                                                                                   bool]:
    """Stage 1: instruction difficulties ``gamma_x`` fitted jointly over all models.

    Every model ``m`` (the evaluated one and each of ``other_models``) contributes its rows
    to one logistic regression::

        logit P(m beats reference on x) = theta_m + phi_m * tanh(z_mx) + gamma_x

    with the model multiplier of ``gamma`` fixed to 1 (as AlpacaEval did to precompute its
    ``instruction_difficulty``; keeping ``psi_m`` free here makes the fit bilinear and
    non-convex, alpaca_eval#346). Ridge penalties: ``difficulty_l2`` on each ``gamma_x`` (a
    N(0, 1/difficulty_l2) prior, which also shrinks instructions that every model wins or
    loses) and ``l2`` on ``theta_m, phi_m``. ``gamma`` is returned centred to mean 0 over
    instructions (the shift ``gamma + c, theta - c`` leaves stage 1 unchanged).
    """
    n_models = len(blocks)
    rows, cols, vals, ys = [], [], [], []
    offset = 0
    for m, (y, tanh_z) in enumerate(blocks):
        r = offset + np.arange(len(y))
        rows += [r, r, r]
        cols += [np.full(len(y), 2 * m), np.full(len(y), 2 * m + 1), 2 * n_models + index]
        vals += [np.ones(len(y)), tanh_z, np.ones(len(y))]
        ys.append(y)
        offset += len(y)
    X = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(offset, 2 * n_models + n_instructions))
    penalty = np.concatenate([np.full(2 * n_models, l2), np.full(n_instructions, difficulty_l2)])
    w, ok = _fit_logistic(X, np.concatenate(ys), penalty)
    gamma = w[2 * n_models:]
    return gamma - gamma.mean(), ok


def _fit_model(y: np.ndarray, tanh_z: np.ndarray, gamma_rows: np.ndarray | None,
               l2: float, w0: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Stage 2: ``logit P = theta + phi * tanh(z) [+ psi * gamma_x]`` for one model."""
    cols = [np.ones_like(y), tanh_z]
    if gamma_rows is not None:
        cols.append(gamma_rows)
    X = np.column_stack(cols)
    return _fit_logistic(X, y, np.full(X.shape[1], l2), w0)


def _lc(w: np.ndarray, gamma: np.ndarray | None,
        which: np.ndarray | None = None) -> np.ndarray:
    """Per-instruction length-free predictions ``sigmoid(theta + psi * gamma_x)``."""
    if gamma is None:
        return np.atleast_1d(expit(w[0]))
    g = gamma if which is None else gamma[which]
    return expit(w[0] + w[2] * g)


def length_controlled_win_rate(
    preferences: Any,
    model_lengths: Any,
    reference_lengths: Any,
    instruction_ids: Any = None,
    *,
    other_models: Sequence[tuple[Any, Any]] | None = None,
    l2: float = 1e-2,
    difficulty_l2: float = 1.0,
    n_bootstrap: int = 0,
    level: float = 0.95,
    seed: int | None = 0,
) -> dict[str, Any]:
    """Length-controlled (LC) win rate: AlpacaEval 2's GLM (Dubois et al. 2024,
    arXiv:2404.04475), fitted offline by penalised maximum likelihood.

    Model (y = ``preferences[i]``, the probability the model beats the reference on
    instruction ``x``; soft labels are used as-is in the log-loss)::

        logit P(model beats ref | x) = theta + phi * tanh(z) + psi * gamma_x
        z = (len_model - len_ref) / sd(len_model - len_ref)

    ``sd`` is the population standard deviation of this model's length differences (the
    difference is scaled, not centred, so ``z = 0`` means "same length"). Lengths are in
    whatever unit you pass (AlpacaEval uses characters).

    **LC win rate** = mean over instructions of the prediction with the length term set to
    zero, ``(1/X) sum_x sigmoid(theta + psi * gamma_x)``. Which terms are fitted:

    - **Without** ``other_models``: the difficulty term cannot be identified from a single
      model's one annotation per instruction, so the fit is ``theta + phi * tanh(z)`` only
      (AlpacaEval's "length_controlled_minimal") and ``LC = sigmoid(theta)``.
    - **With** ``other_models`` (a list of ``(preferences, model_lengths)`` for other models
      on the *same* rows: same instructions in the same order, against the same reference
      outputs, so ``reference_lengths`` is shared): two convex stages, as AlpacaEval does
      with its precomputed ``instruction_difficulty``. Stage 1 fits ``gamma_x`` jointly over
      all models with ``psi_m = 1`` (see :func:`_fit_difficulty`; each model's ``z`` uses
      its own ``sd``); stage 2 refits ``theta, phi, psi`` for the evaluated model with
      ``gamma`` fixed.

    ``instruction_ids`` (optional) groups rows that share an instruction (several samples
    per instruction): they share ``gamma_x`` and the LC mean runs over distinct instructions.
    By default every row is its own instruction.

    Regularisation: ridge with precision ``l2`` on ``theta, phi, psi`` (the default 1e-2
    is negligible next to hundreds of rows and keeps the fit finite when the model wins
    everything) and ``difficulty_l2`` on ``gamma``. Unlike AlpacaEval this does not mix in
    "gamed" verbose/concise baseline annotations (it downloads them) and does not select an
    L1 strength by cross-validation, so values are close to but not identical with the
    leaderboard's. If all length differences are equal (``sd = 0``) length is confounded
    with ``theta``; the length term is dropped and ``length_term`` is False.

    Returns ``{"lc_win_rate", "lc_se", "win_rate", "theta", "phi", "psi", "length_sd",
    "length_term", "difficulty_term", "n", "n_instructions", "n_models", "converged",
    "ci_low", "ci_high"}``. ``lc_se`` is AlpacaEval's standard error: the SEM of the
    per-instruction predictions (0 without the difficulty term); it ignores parameter
    uncertainty. With ``n_bootstrap > 0``, ``ci_low``/``ci_high`` are a percentile interval
    at ``level`` from refitting stage 2 on instructions resampled with replacement (gamma and
    the length scale held fixed), which does include parameter uncertainty; otherwise None.
    ``psi`` is None without the difficulty term.
    """
    y = _as_preferences(preferences)
    lm = as_finite(model_lengths, "model_lengths")
    lr = as_finite(reference_lengths, "reference_lengths")
    n = same_length(preferences=y, model_lengths=lm, reference_lengths=lr)
    if l2 <= 0 or difficulty_l2 <= 0:
        raise ValueError("l2 and difficulty_l2 must be > 0")
    index, n_instructions = _instruction_index(instruction_ids, n)
    tanh_z, sd = _length_term(lm, lr)

    blocks = [(y, tanh_z)]
    for k, entry in enumerate(other_models or ()):
        if len(entry) != 2:
            raise ValueError(f"other_models[{k}] must be (preferences, model_lengths)")
        yk = _as_preferences(entry[0], f"other_models[{k}].preferences")
        lk = as_finite(entry[1], f"other_models[{k}].model_lengths")
        same_length(preferences=y, **{f"other_models[{k}].preferences": yk,
                                      f"other_models[{k}].model_lengths": lk})
        blocks.append((yk, _length_term(lk, lr)[0]))

    converged = True
    gamma = None
    if len(blocks) > 1:
        gamma, converged = _fit_difficulty(blocks, index, n_instructions, l2, difficulty_l2)
    gamma_rows = None if gamma is None else gamma[index]
    w, ok = _fit_model(y, tanh_z, gamma_rows, l2)
    converged = converged and ok
    per_instruction = _lc(w, gamma)
    lc = float(per_instruction.mean())
    lc_se = (float(per_instruction.std(ddof=1) / np.sqrt(len(per_instruction)))
             if len(per_instruction) > 1 else 0.0)

    ci_low = ci_high = None
    if n_bootstrap > 0:
        _z(level)  # validates level
        alpha = (1 - level) / 2
        rng = np.random.default_rng(seed)
        rows_of = [np.flatnonzero(index == x) for x in range(n_instructions)]
        values = np.empty(n_bootstrap)
        for b in range(n_bootstrap):
            pick = rng.integers(0, n_instructions, size=n_instructions)
            rows = np.concatenate([rows_of[x] for x in pick])
            wb, _ = _fit_model(y[rows], tanh_z[rows], None if gamma is None
                               else gamma_rows[rows], l2, w0=w)
            values[b] = _lc(wb, gamma, pick).mean()
        ci_low, ci_high = (float(q) for q in np.quantile(values, [alpha, 1 - alpha]))

    return {
        "lc_win_rate": lc,
        "lc_se": lc_se,
        "win_rate": float(y.mean()),
        "theta": float(w[0]),
        "phi": float(w[1]),
        "psi": None if gamma is None else float(w[2]),
        "length_sd": sd,
        "length_term": sd > 0,
        "difficulty_term": gamma is not None,
        "n": n,
        "n_instructions": n_instructions,
        "n_models": len(blocks),
        "converged": converged,
        "ci_low": ci_low,
        "ci_high": ci_high,
    }
