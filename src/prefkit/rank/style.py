"""Style-controlled Bradley-Terry (Chatbot Arena's style control, a contextual BT).

``P(a beats b) = sigmoid(theta_a - theta_b + x^T gamma)`` where ``x`` holds per-vote style
covariates. For a style count (response tokens, headers, lists, bold) with values ``c_a`` and
``c_b`` the covariate is the relative difference ``(c_a - c_b) / (c_a + c_b + offset)``
z-scored over the votes (:func:`style_covariates`). Ties are soft labels ``y = 0.5``. The
published rating is ``theta`` alone: the style effects ``gamma`` are "regressed out"
(Li et al. 2024, "Does style matter? Disentangling style and substance in Chatbot Arena").

The estimate minimizes (natural-log ratings, ``D = 1`` or the number of votes)::

    - (1/D) sum_k  v_k [y_k z_k - log(1 + e^z_k)]
    + rating_penalty / 2 * ||theta||^2 + coef_penalty / 2 * ||gamma||^2

where ``v_k`` are per-vote weights (optionally inverse pair frequencies). The two peers differ
only in these settings (:class:`StyleSettings`), so both are reproduced exactly:

- :data:`ARENA_RANK` -- LMArena's ``arena-rank`` 0.1.1 ``ContextualBradleyTerry`` with
  ``ContextualPairDataset.from_pandas`` defaults, what Chatbot Arena runs today: mean
  likelihood (``D`` = votes), ``coef_penalty = 1.0`` (``reg``), no penalty on the ratings,
  votes weighted by ``1 / max(pair count, 50)`` (normalized to mean 1), covariates
  ``(c_a - c_b) / (c_a + c_b)`` (0 when both are 0) as in its LMArena example;
- :data:`FASTCHAT` -- FastChat's ``compute_style_control`` (``reg = 0.5``): summed likelihood,
  ``0.25 (||r||^2 + ||gamma||^2)`` on ratings ``r`` in log10 units (``theta = ln(10) r``), i.e.
  ``rating_penalty = 0.5 / ln(10)^2`` (0.094, 5.3x weaker than 0.5 on natural-log ratings)
  and ``coef_penalty = 0.5``; covariates ``(c_a - c_b) / (c_a + c_b + 1)``; no reweighting.

Chatbot Arena's covariates (both peers) are the counts of response tokens, markdown headers,
list items and bold spans (:data:`CHATBOT_ARENA_FEATURES`).

Fitted by Newton's method on the vote rows (covariates are continuous, so votes cannot be
merged); each step is a handful of vectorized passes (``bincount`` scatters for the rating
block, ``X^T diag(h) X`` for the style block). The bootstrap reweights the vote rows with
multinomial counts (the distribution of resampling rows) and warm-starts every round; the
sandwich covariance (:func:`style_sandwich_covariance`) needs one pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from ._math import expit
from .bt import LN10

CHATBOT_ARENA_FEATURES = ("sum_assistant_tokens", "header_count", "list_count", "bold_count")
"""Chatbot Arena's style covariates, by their ``conv_metadata`` names without the side marker
(``sum_assistant_a_tokens`` / ``sum_assistant_b_tokens`` -> ``sum_assistant_tokens``)."""
FEATURE_ALIASES = {"length": "sum_assistant_tokens", "tokens": "sum_assistant_tokens",
                   "headers": "header_count", "lists": "list_count", "bold": "bold_count"}


@dataclass(frozen=True)
class StyleSettings:
    """How a style-controlled BT is penalized, weighted and featurized (module docstring)."""

    rating_penalty: float
    """``lambda_theta``: L2 penalty ``lambda/2 ||theta||^2`` on natural-log ratings (in the
    units of the objective: per vote when ``likelihood="mean"``)."""
    coef_penalty: float
    """``lambda_gamma``: L2 penalty on the style coefficients."""
    likelihood: str
    """``"mean"`` (divided by the number of votes) or ``"sum"``."""
    ratio_offset: float
    """``offset`` in ``(c_a - c_b) / (c_a + c_b + offset)`` (a zero denominator counts as 1)."""
    min_pair_count: float | None
    """Weight every vote by ``1 / max(votes of its pair, min_pair_count)`` (normalized to mean
    1); None: unweighted."""
    sandwich: str = "penalized"
    """``"penalized"``: the M-estimator sandwich of the penalized objective; ``"arena-rank"``:
    as ``arena-rank`` 0.1.1 computes it (see :func:`style_sandwich_covariance`)."""
    sandwich_ridge: float = 0.0
    """Added to the sandwich's Hessian diagonal, per vote (arena-rank: ``hessian_reg`` 1e-5)."""

    def __post_init__(self):
        if self.likelihood not in ("mean", "sum"):
            raise ValueError(f"likelihood must be 'mean' or 'sum', got {self.likelihood!r}")
        if self.sandwich not in ("penalized", "arena-rank"):
            raise ValueError(f"sandwich must be 'penalized' or 'arena-rank', got "
                             f"{self.sandwich!r}")
        for name in ("rating_penalty", "coef_penalty", "ratio_offset", "sandwich_ridge"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def denominator(self, n_votes: float) -> float:
        """``D``: what the log-likelihood is divided by."""
        return float(n_votes) if self.likelihood == "mean" else 1.0


ARENA_RANK = StyleSettings(rating_penalty=0.0, coef_penalty=1.0, likelihood="mean",
                           ratio_offset=0.0, min_pair_count=50, sandwich="arena-rank",
                           sandwich_ridge=1e-5)
FASTCHAT = StyleSettings(rating_penalty=float(0.5 / LN10**2), coef_penalty=0.5, likelihood="sum",
                         ratio_offset=1.0, min_pair_count=None)
STYLE_CONVENTIONS = {"arena-rank": ARENA_RANK, "fastchat": FASTCHAT}


@dataclass
class StyleResult:
    params: np.ndarray
    """Centred ratings (natural-log units) with the style effects removed."""
    style_coef: np.ndarray
    """``gamma``: effect of one standard deviation of each covariate, in logits."""
    n_iter: int
    converged: bool
    log_likelihood: float
    """Weighted log-likelihood (not divided by ``D``, no penalty)."""
    covariance: np.ndarray | None = None
    """Sandwich covariance of ``params`` (``fit_bt_style(..., sandwich=True)``; see
    :func:`style_sandwich_covariance`)."""


def resolve_features(requested: list[str] | None, available: list[str]) -> list[str]:
    """Feature names to use: ``requested`` (aliases ``length``/``tokens``, ``headers``,
    ``lists``, ``bold`` allowed), or by default the Chatbot Arena features present. Raises
    ValueError naming what is missing and what is available."""
    if requested is None:
        chosen = [f for f in CHATBOT_ARENA_FEATURES if f in available]
        if not chosen:
            raise ValueError("none of Chatbot Arena's style features ("
                             f"{', '.join(CHATBOT_ARENA_FEATURES)}) are in the votes; "
                             f"available: {', '.join(available) or 'none'}; choose with "
                             "--style-features")
        return chosen
    chosen = [FEATURE_ALIASES.get(f, f) for f in requested]
    missing = [f for f, c in zip(requested, chosen, strict=True) if c not in available]
    if missing:
        raise ValueError(f"unknown style feature(s) {', '.join(missing)}; available: "
                         f"{', '.join(available) or 'none'}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"a style feature is named twice: {', '.join(requested)}")
    return chosen


def style_covariates(counts_a: np.ndarray, counts_b: np.ndarray, *, offset: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, d]`` counts of each side -> z-scored ``(a - b) / (a + b + offset)`` (a zero
    denominator counts as 1; standard deviation over votes, ddof 0; a constant column stays 0)
    plus the mean and standard deviation used. ``offset`` 0 is arena-rank's LMArena example, 1
    FastChat's ``add_one``."""
    a = np.asarray(counts_a, dtype=float)
    b = np.asarray(counts_b, dtype=float)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    # column by column into one column-major result: no [N, d] temporaries (at a million
    # votes their fresh pages cost more than the arithmetic)
    out = np.empty(a.shape, order="F")
    mean, std = np.empty(a.shape[1]), np.empty(a.shape[1])
    denominator = np.empty(len(a))
    for j in range(a.shape[1]):
        np.add(a[:, j], b[:, j], out=denominator)
        denominator += offset
        denominator[denominator == 0] = 1.0
        column = out[:, j]
        np.subtract(a[:, j], b[:, j], out=column)
        column /= denominator
        mean[j] = column.mean()
        std[j] = column.std()
        if not std[j] > 0:
            std[j] = 1.0
        column -= mean[j]
        column /= std[j]
    return out, mean, std


def inverse_pair_weights(a: np.ndarray, b: np.ndarray, min_count: float) -> np.ndarray:
    """arena-rank's reweighting: vote ``k`` gets ``1 / max(n_pair(k), min_count)`` with
    ``n_pair`` the number of votes of its unordered pair, normalized to mean 1."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    n = int(max(a.max(initial=-1), b.max(initial=-1))) + 1
    key = np.minimum(a, b) * n + np.maximum(a, b)
    if n * n <= 4 * len(key) + (1 << 16):  # a count per possible pair: no sort
        per_vote = np.bincount(key, minlength=n * n)[key]
    else:
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        per_vote = counts[inverse]
    weights = 1.0 / np.maximum(per_vote.astype(float), min_count)
    return weights / weights.mean()


def _row_weights(a, b, settings: StyleSettings) -> np.ndarray:
    if settings.min_pair_count is None:
        return np.ones(len(a))
    return inverse_pair_weights(a, b, settings.min_pair_count)


@dataclass
class _Design:
    """The vote rows of a style fit, laid out for the passes every Newton step makes: model
    indices, the covariates column-major (each feature one contiguous vector) and each vote's
    ordered pair ``a * n + b`` (the rating and cross blocks are scatters over pairs)."""

    n: int
    a: np.ndarray
    b: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pair_key: np.ndarray
    scratch: np.ndarray
    """``[N, d]`` column-major work space of :meth:`stacked` (allocated once: fresh pages of
    a million-row temporary cost more than the arithmetic on them)."""

    @classmethod
    def build(cls, n_items: int, a, b, y, x) -> _Design:
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        x = np.asfortranarray(np.asarray(x, dtype=float).reshape(len(a), -1))
        return cls(n_items, a, b, x, np.asarray(y, dtype=float), a * n_items + b,
                   np.empty_like(x))

    def logits(self, theta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return theta[self.a] - theta[self.b] + self.x @ gamma

    def score(self, r: np.ndarray) -> np.ndarray:
        """``sum_k r_k z_k`` with ``z_k = (e_a - e_b, x_k)``."""
        n = self.n
        return np.concatenate([np.bincount(self.a, r, n) - np.bincount(self.b, r, n),
                               self.x.T @ r])

    def _pair_sums(self, v: np.ndarray) -> np.ndarray:
        """``[n, n]``: the sum of ``v`` over the votes of each ordered pair ``(a, b)``."""
        return np.bincount(self.pair_key, v, self.n * self.n).reshape(self.n, self.n)

    def stacked(self, v: np.ndarray) -> np.ndarray:
        """``sum_k v_k z_k z_k^T``, ``[n + d, n + d]``: the rating block is a weighted graph
        Laplacian of the pair sums, the cross block ``sum_k v_k (e_a - e_b) x_k^T`` comes from
        pair sums of ``v x_j``, the style block is ``X^T diag(v) X``."""
        n, d = self.n, self.x.shape[1]
        pair = self._pair_sums(v)
        block_tt = -(pair + pair.T)
        block_tt[np.arange(n), np.arange(n)] = pair.sum(axis=1) + pair.sum(axis=0)
        vx = self.scratch
        for j in range(d):
            np.multiply(self.x[:, j], v, out=vx[:, j])
        block_tg = np.empty((n, d))
        for j in range(d):
            pair_x = self._pair_sums(vx[:, j])
            block_tg[:, j] = pair_x.sum(axis=1) - pair_x.sum(axis=0)
        return np.block([[block_tt, block_tg], [block_tg.T, self.x.T @ vx]])


@dataclass
class _Point:
    """The logits at one estimate and what the objective and its derivatives share:
    ``e = exp(-|z|)`` gives ``log(1 + e^z) = max(z, 0) + log1p(e)`` and ``sigmoid(z)``."""

    z: np.ndarray
    e: np.ndarray

    @classmethod
    def at(cls, design: _Design, theta: np.ndarray, gamma: np.ndarray) -> _Point:
        z = design.logits(theta, gamma)
        return cls(z, np.exp(-np.abs(z)))

    def loglik(self, w: np.ndarray, y: np.ndarray) -> float:
        """``sum_k w_k [y_k z_k - log(1 + e^z_k)]``."""
        softplus = np.maximum(self.z, 0.0) + np.log1p(self.e)
        return float(w @ (y * self.z - softplus))

    def prob(self) -> np.ndarray:
        return np.where(self.z >= 0, 1.0, self.e) / (1.0 + self.e)


def _objective(design: _Design, theta, gamma, w, lam_theta, lam_gamma):
    """Weighted log-likelihood, the penalized objective (to maximize, in summed units) and
    the point (logits) it was evaluated at."""
    point = _Point.at(design, theta, gamma)
    loglik = point.loglik(w, design.y)
    return loglik, loglik - 0.5 * (lam_theta * float(theta @ theta)
                                   + lam_gamma * float(gamma @ gamma)), point


def _gradient(design: _Design, theta, gamma, point: _Point, w, lam_theta, lam_gamma):
    """Gradient of the penalized objective, and ``sigmoid(z)``."""
    n, d = design.n, design.x.shape[1]
    p = point.prob()
    penalty = np.r_[np.full(n, lam_theta), np.full(d, lam_gamma)]
    return design.score(w * (design.y - p)) - penalty * np.concatenate([theta, gamma]), p


def _information(design: _Design, p, w, lam_theta, lam_gamma):
    """Information (negative Hessian) of the penalized objective, the free all-ones
    direction of the ratings pinned when they carry no penalty."""
    n, d = design.n, design.x.shape[1]
    info = design.stacked(w * p * (1 - p))
    info[np.diag_indices(n + d)] += np.r_[np.full(n, lam_theta), np.full(d, lam_gamma)]
    if lam_theta == 0:
        info[:n, :n] += 1.0 / n  # pin the free direction (all ratings + constant)
    return info


STEP_TOL = 1e-7
"""A fit has converged when the remaining step is below this in every parameter (logits:
7e-6 Elo points)."""


def _fit_rows(design: _Design, w, lam_theta, lam_gamma, max_iter, tol, initial,
              information=None):
    """Newton's method on the summed objective (penalties already multiplied by ``D``).

    With ``information`` (a fixed matrix, e.g. the full data's information at its estimate for
    a bootstrap round started there) the steps use it instead of the current Hessian: the same
    fixed point (the gradient is zero), found without rebuilding the Hessian; convergence is
    linear with rate ``||I - information^-1 H||``, a few hundredths for a resample. Without
    enough progress (a step that does not increase the objective) it falls back to Newton.

    Converged: the gradient is below ``tol`` (per 10^4 votes), or the step the last full step's
    matrix predicts from the new gradient is below :data:`STEP_TOL` in every parameter (for
    Newton's method that is the remaining distance to second order: the step it would take is
    not worth another Hessian)."""
    n, d = design.n, design.x.shape[1]
    theta, gamma = ((np.zeros(n), np.zeros(d)) if initial is None
                    else (np.array(initial[0], float), np.array(initial[1], float)))
    factor = None if information is None else np.linalg.inv(information)
    loglik, obj, point = _objective(design, theta, gamma, w, lam_theta, lam_gamma)
    grad, p = _gradient(design, theta, gamma, point, w, lam_theta, lam_gamma)
    converged, n_iter, last = False, 0, None
    grad_tol = tol * max(1.0, w.sum() / 1e4)
    for n_iter in range(1, max_iter + 1):
        if np.max(np.abs(grad)) < grad_tol or (
                last is not None and np.max(np.abs(np.linalg.solve(last, grad))) < STEP_TOL):
            converged, n_iter = True, n_iter - 1
            break
        if factor is not None:
            matrix, step = information, factor @ grad
        else:
            matrix = _information(design, p, w, lam_theta, lam_gamma)
            step = np.linalg.solve(matrix, grad)
        t = 1.0
        while True:  # backtracking on the objective alone; derivatives only once accepted
            new_loglik, new_obj, new_point = _objective(design, theta + t * step[:n],
                                                        gamma + t * step[n:], w, lam_theta,
                                                        lam_gamma)
            if new_obj >= obj - 1e-12 * abs(obj) or t < 1e-8 or factor is not None:
                break
            t *= 0.5
        if factor is not None and new_obj < obj - 1e-12 * abs(obj):
            factor = None  # the fixed matrix does not fit here: Newton steps from this point
            continue
        theta, gamma, loglik, obj = theta + t * step[:n], gamma + t * step[n:], new_loglik, \
            new_obj
        last = matrix if t == 1.0 else None
        grad, p = _gradient(design, theta, gamma, new_point, w, lam_theta, lam_gamma)
    return StyleResult(theta - theta.mean(), gamma, n_iter, converged, loglik)


def fit_bt_style(
    n_items: int, a: np.ndarray, b: np.ndarray, y: np.ndarray, x: np.ndarray, *,
    settings: StyleSettings = ARENA_RANK, weights: np.ndarray | None = None,
    max_iter: int = 50, tol: float = 1e-8,
    initial: tuple[np.ndarray, np.ndarray] | None = None, sandwich: bool = False,
) -> StyleResult:
    """Contextual BT estimate under ``settings`` (see the module docstring; default
    :data:`ARENA_RANK`). ``y`` is 1 when ``a`` won, 0 when ``b`` won, 0.5 for a tie; ``x`` is
    ``[N, d]`` covariates (from :func:`style_covariates`); ``weights`` are multiplicities of
    the rows (frequency weights: ``D`` counts them), on top of the settings' pair weights.
    ``sandwich=True`` also computes the estimate's sandwich covariance
    (:func:`style_sandwich_covariance`, default ridge) from the same prepared votes, into
    ``result.covariance``. Warns when Newton's method does not converge (e.g. a model that never
    won, without a rating penalty)."""
    if sandwich and weights is not None:
        raise ValueError("sandwich=True needs unweighted votes (weights=None)")
    design, pair_w = _prepare(n_items, a, b, y, x, settings)
    result = _fit(design, pair_w, settings, weights, max_iter, tol, initial)
    if sandwich:
        result.covariance = _sandwich(design, pair_w, result, settings, None)
    return result


def _prepare(n_items: int, a, b, y, x, settings: StyleSettings
             ) -> tuple[_Design, np.ndarray]:
    """The votes laid out for the passes, and their pair weights under ``settings``."""
    design = _Design.build(n_items, a, b, y, x)
    return design, _row_weights(design.a, design.b, settings)


def _fit(design: _Design, pair_w: np.ndarray, settings: StyleSettings, weights, max_iter: int,
         tol: float, initial) -> StyleResult:
    freq = np.ones(len(design.a)) if weights is None else np.asarray(weights, dtype=float)
    scale = settings.denominator(freq.sum())
    result = _fit_rows(design, freq * pair_w, scale * settings.rating_penalty,
                       scale * settings.coef_penalty, max_iter, tol, initial)
    if not result.converged:
        warnings.warn(f"the style-controlled fit did not converge in {max_iter} Newton steps "
                      "(a model that never won or never lost has no finite rating without a "
                      "rating penalty)", RuntimeWarning, stacklevel=3)
    return result


def bootstrap_bt_style(
    n_items: int, a, b, y, x, *, rounds: int = 100, settings: StyleSettings = ARENA_RANK,
    seed: int = 0, initial: StyleResult | None = None,
) -> np.ndarray:
    """``[rounds, n_items]`` centred ratings from resampled vote rows (multinomial row counts,
    the pair weights of the full data kept, as arena-rank's bootstrap does).

    Every round starts at the full data's estimate and steps with the full data's information
    there (a resample's Hessian differs from it by O(1/sqrt(votes))): each step costs one
    gradient instead of a Hessian, and the rounds converge to the same tolerance as Newton's
    method (to which a round falls back if a step fails to improve)."""
    design, pair_w = _prepare(n_items, a, b, y, x, settings)
    rng = np.random.default_rng(seed)
    if initial is None:
        initial = _fit(design, pair_w, settings, None, 50, 1e-8, None)
    n_rows = len(design.a)
    scale = settings.denominator(n_rows)
    lam_theta, lam_gamma = scale * settings.rating_penalty, scale * settings.coef_penalty
    start = (initial.params, initial.style_coef)
    p = _Point.at(design, *start).prob()
    information = _information(design, p, pair_w, lam_theta, lam_gamma)
    out = np.empty((rounds, n_items))
    for r in range(rounds):
        # multinomial(N, uniform) counts, drawn as a bincount of N uniform row picks
        counts = np.bincount(rng.integers(0, n_rows, n_rows), minlength=n_rows)
        out[r] = _fit_rows(design, counts * pair_w, lam_theta, lam_gamma, 20, 1e-6, start,
                           information=information).params
    return out


def style_sandwich_covariance(
    n_items: int, a, b, y, x, result: StyleResult, *, settings: StyleSettings = ARENA_RANK,
    ridge: float | None = None,
) -> np.ndarray:
    """Robust ("sandwich", Huber 1967 / White 1980) covariance ``A^-1 B A^-1`` of the centred
    ratings at the estimate ``result``, in summed units with ``z_k = (e_a - e_b, x_k)``,
    ``p_k = sigmoid(z_k^T beta)``, ``v_k`` the pair weights, ``n`` votes, penalty gradient
    ``G = D Lambda beta`` (``= sum_k`` scores at the optimum)::

        A = sum_k v_k p_k (1 - p_k) z_k z_k^T [+ D Lambda] + ridge n I
        B = sum_k v_k^2 (y_k - p_k)^2 z_k z_k^T - G G^T / n      ("penalized")
                                                 - G G^T / n^2    ("arena-rank")

    ``settings.sandwich == "penalized"`` is the M-estimator sandwich of the penalized
    objective (``D Lambda`` in ``A``; ``B`` the covariance of the per-vote penalized scores).
    ``"arena-rank"`` reproduces arena-rank 0.1.1: its ``A`` is the Hessian of the likelihood
    alone (no penalty) and it subtracts ``(reg^2 / n) gamma gamma^T`` from the per-vote score
    covariance (``G G^T / n^2`` here) and adds ``hessian_reg = 1e-5`` per vote to ``A``'s
    diagonal (``ridge``, default ``settings.sandwich_ridge``: 1e-5 in :data:`ARENA_RANK`, 0 in
    :data:`FASTCHAT`). The ridge is not negligible there: without the penalty in ``A``, style
    covariates that go with particular models leave ``A`` nearly singular, and the ridge also
    narrows the intervals of models with few votes. With ``ridge=0`` the all-ones direction (free
    without a rating penalty) is projected out exactly."""
    design, v = _prepare(n_items, a, b, y, x, settings)
    return _sandwich(design, v, result, settings, ridge)


def _sandwich(design: _Design, v: np.ndarray, result: StyleResult, settings: StyleSettings,
              ridge: float | None) -> np.ndarray:
    n, d, n_rows = design.n, design.x.shape[1], len(design.a)
    beta = np.concatenate([result.params, result.style_coef])
    p = expit(design.logits(result.params, result.style_coef))
    penalty = settings.denominator(n_rows) * np.r_[np.full(n, settings.rating_penalty),
                                                   np.full(d, settings.coef_penalty)]
    hess = design.stacked(v * p * (1 - p))
    if settings.sandwich == "penalized":
        hess[np.diag_indices(n + d)] += penalty
    hess[np.diag_indices(n + d)] += (settings.sandwich_ridge if ridge is None else ridge) * n_rows
    g = penalty * beta
    meat = design.stacked((v * (design.y - p)) ** 2)
    meat -= np.outer(g, g) / (n_rows if settings.sandwich == "penalized" else n_rows**2)
    hess[:n, :n] += 1.0 / n  # the all-ones direction: free, and absent from the scores
    bread = np.linalg.inv(hess)
    centre = np.eye(n) - 1.0 / n
    return centre @ (bread @ meat @ bread)[:n, :n] @ centre


def with_rating_prior(settings: StyleSettings, alpha: float, n_votes: float) -> StyleSettings:
    """``settings`` with a rating penalty equivalent to the summed-units prior ``alpha`` (as
    in :func:`~prefkit.rank.bt.fit_bradley_terry`), for data whose MLE is infinite."""
    return replace(settings, rating_penalty=alpha / settings.denominator(n_votes))
