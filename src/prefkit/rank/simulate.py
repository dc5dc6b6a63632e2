"""How many votes does an arena need? Simulated convergence of rating method + matchmaking.

A hidden truth ``s ~ N(0, 1)`` (natural-log strengths, seeded) generates every vote; after each
vote the rater is updated, and every ``check_every`` votes Kendall's tau
(:func:`scipy.stats.kendalltau`, tau-b) between the rater's estimate and ``s`` is recorded.

Votes, for the ``k`` items the strategy picked:

- ``k = 2``: Bradley-Terry, ``P(i beats j) = sigmoid(s_i - s_j)``; with probability ``noise``
  the label is flipped (a careless or adversarial voter);
- ``k > 2``: a Plackett-Luce ranking of the ``k`` items by Gumbel-max (sort ``s_i + G_i``,
  ``G_i`` standard Gumbel, best first); with probability ``noise`` it is replaced by a uniformly
  random permutation.

Methods (the rater):

- ``"elo"`` -- online Elo (:func:`prefkit.rank.elo.online_elo`'s update, ``K = 4``, 400 / log10
  scale), updated per vote; a ranking of ``k`` is fed as its ``C(k, 2)`` implied pairwise votes
  (better position wins), in order.
- ``"bt"`` -- Bradley-Terry MAP (:func:`prefkit.rank.fit_bradley_terry` with the Gaussian
  prior ``alpha = 0.1``, prior sd ~3.2 logits, so early fits are finite) on all implied
  pairwise votes so far, refitted warm-started at every check and, when the strategy needs
  estimates, after at least ``max(refit_every, refit_fraction * votes)`` new votes (the
  cache: a few hundred fits per run instead of one per vote).
- ``"trueskill"`` -- the TrueSkill factor-graph update (Herbrich, Minka & Graepel 2007,
  :mod:`prefkit.rank.skill`), one ``k``-way update per vote; the estimate is ``mu``. With
  TrueSkill's (and K-Sort Arena's) dynamics ``tau = 25/300``: variance ``tau^2`` is added to
  every skill before each update, so skills are tracked as if they drifted.
- ``"trueskill_static"`` -- the same with ``tau = 0`` (skills assumed constant, as they are in
  this simulation).
- ``"pl"`` -- Plackett-Luce MAP (:func:`prefkit.rank.plackett_luce.fit_plackett_luce`, same
  prior) on all rankings so far, refitted like ``"bt"``.

Strategies (:mod:`prefkit.rank.matchmaking`): ``"random"``, ``"ucb"`` (K-Sort Arena,
arXiv 2408.14468, with its reference constants ``c = 1`` and pseudo-count ``1e-5``; closeness
in TrueSkill points: raw for TrueSkill, logits divided by
:data:`~prefkit.rank.matchmaking.LOGIT_PER_TS_POINT` otherwise) and ``"infogain"`` (expected
information gain under a Gaussian posterior in logits). The posterior covariance is: for
``bt``/``pl`` the Laplace covariance, the inverse of the Fisher information of the last fit
(the fit's ``hessian``; :func:`pl_information` computes the same for PL) plus the information
of each vote since then at the current estimate (a rank-one update per implied pair, or the
PL stages' ``diag(w) - w w^T``, so consecutive choices between refits differ); for ``trueskill``
``diag(sigma^2)``; for ``elo`` ``diag(1 / (alpha + n_i / 4))`` with ``n_i`` the item's pairwise
votes (each at most ``1/4`` Fisher information).

Custom strategies: any callable ``strategy(state: MatchState) -> items`` (``k`` distinct item
ids) can be passed instead of a name, to try a new matchmaker under the same voters, raters and
convergence rule; :class:`MatchState` gives it the rater's posterior, the pair counts, the vote
count, its random generator and -- for oracle baselines (upper bounds on what matchmaking can
achieve), never for a real matchmaker -- the hidden truth and the noise. With
``processes > 1`` in :func:`convergence_table` the callable must be picklable (a module-level
function).

Convergence: ``votes`` is the vote count at the first check where tau >= ``target_tau`` and
stays >= ``target_tau`` at the next two checks (three checks in a row; the run stops there). If
``max_votes`` is reached first it is ``None``. With ``hold=h`` (e.g. 2) the ranking must stay
at the target at every check until the vote count has grown ``h``-fold: a stricter rule, because
a rater that never settles -- TrueSkill's online filter adds variance ``tau^2`` at every update,
so its means keep moving -- passes three checks in a row on a lucky stretch and drops below the
target again (with K-Sort's TrueSkill + UCB, 20 items, pairs: in 17% of the checks after such a
"convergence", against 2% for Plackett-Luce MAP + information gain).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit, softmax
from scipy.stats import kendalltau

from .aggregate import PairCounts
from .bt import fit_bradley_terry
from .matchmaking import (
    LOGIT_PER_TS_POINT,
    information_gain_match,
    random_match,
    ucb_match,
)

METHODS = ("elo", "bt", "trueskill", "trueskill_static", "pl")
STRATEGIES = ("random", "ucb", "infogain")
DEFAULT_COMBOS = (("elo", "random"), ("bt", "random"), ("trueskill", "ucb"), ("pl", "infogain"))
QUICK = {"n_items_list": (20,), "ks": (2, 4), "noises": (0.0, 0.2), "seeds": (0, 1, 2)}
"""A preset for :func:`convergence_table` that runs in seconds: ``convergence_table(**QUICK)``."""

__all__ = [
    "DEFAULT_COMBOS", "METHODS", "QUICK", "STRATEGIES", "MatchState", "convergence_table",
    "kendall_tau", "simulated_truth", "strategy_name",
    "pl_information", "plot_convergence", "simulate_convergence",
]


def kendall_tau(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors; 0 when undefined (a constant estimate)."""
    tau = kendalltau(estimate, truth).statistic
    return 0.0 if not np.isfinite(tau) else float(tau)


# --------------------------------------------------------------------------- raters


def _implied_pairs(ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Winners and losers of the ``C(k, 2)`` pairs implied by a ranking (best first)."""
    a, b = np.triu_indices(len(ranking), 1)
    return ranking[a], ranking[b]


class _EloRater:
    """Online Elo, one pairwise update at a time (the update of ``online_elo``)."""

    def __init__(self, n: int, alpha: float, k_factor: float = 4.0, scale: float = 400.0,
                 base: float = 10.0, init: float = 1000.0):
        self.ratings = np.full(n, init, dtype=float)
        self.k, self.scale, self.base, self.init = k_factor, scale, base, init
        self.n_votes = np.zeros(n)
        self.alpha = alpha

    def update(self, ranking: np.ndarray) -> None:
        r = self.ratings
        for w, lo in zip(*_implied_pairs(ranking), strict=True):
            expected = 1.0 / (1.0 + self.base ** ((r[lo] - r[w]) / self.scale))
            delta = self.k * (1.0 - expected)
            r[w] += delta
            r[lo] -= delta
            self.n_votes[w] += 1
            self.n_votes[lo] += 1

    def estimate(self) -> np.ndarray:
        return self.ratings

    def ucb_inputs(self):
        return self._logits(), None, LOGIT_PER_TS_POINT

    def _logits(self) -> np.ndarray:
        return (self.ratings - self.init) * np.log(self.base) / self.scale

    def posterior(self):
        return self._logits(), np.diag(1.0 / (self.alpha + 0.25 * self.n_votes))


class _RefitRater:
    """Shared bookkeeping of the refitted MAP raters: warm starts, lazy refits, and the
    Laplace information updated per vote between refits."""

    def __init__(self, n: int, alpha: float, refit_every: int, refit_fraction: float = 0.0):
        self.n = n
        self.alpha = alpha
        self.refit_every = max(1, int(refit_every))
        self.refit_fraction = refit_fraction
        self.n_votes = 0
        self.mu = np.zeros(n)
        self.info = alpha * np.eye(n)
        self.pending = 0
        self._cov: np.ndarray | None = None

    def _maybe_refit(self, force: bool) -> None:
        due = max(self.refit_every, self.refit_fraction * self.n_votes)
        if self.pending and (force or self.pending >= due):
            self._refit()
            self.pending = 0
            self._cov = None

    def estimate(self) -> np.ndarray:
        self._maybe_refit(force=True)
        return self.mu

    def ucb_inputs(self):
        self._maybe_refit(force=False)
        return self.mu, None, LOGIT_PER_TS_POINT

    def posterior(self):
        self._maybe_refit(force=False)
        if self._cov is None:
            self._cov = np.linalg.inv(self.info)
        return self.mu, self._cov


class _BTRater(_RefitRater):
    def __init__(self, n: int, alpha: float, refit_every: int, refit_fraction: float):
        super().__init__(n, alpha, refit_every, refit_fraction)
        self.wins = np.zeros((n, n))

    def update(self, ranking: np.ndarray) -> None:
        w, lo = _implied_pairs(ranking)
        np.add.at(self.wins, (w, lo), 1.0)
        h = expit(self.mu[w] - self.mu[lo])
        h = h * (1.0 - h)
        np.add.at(self.info, (w, w), h)
        np.add.at(self.info, (lo, lo), h)
        np.add.at(self.info, (w, lo), -h)
        np.add.at(self.info, (lo, w), -h)
        self.pending += 1
        self.n_votes += 1
        self._cov = None

    def _refit(self) -> None:
        total = self.wins + self.wins.T
        i, j = np.nonzero(np.triu(total, 1))
        counts = PairCounts(self.n, i, j, self.wins[i, j], self.wins[j, i], np.zeros(len(i)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = fit_bradley_terry(counts, alpha=self.alpha, initial_params=self.mu, tol=1e-8)
        self.mu = fit.params
        self.info = np.array(fit.hessian[: self.n, : self.n], dtype=float)


def pl_information(params: np.ndarray, rankings: np.ndarray) -> np.ndarray:
    """Observed Fisher information ``[n, n]`` of full Plackett-Luce rankings ``[m, k]`` (best
    first) at ``params``: stage ``r`` chooses ``rankings[:, r]`` out of ``S_r = rankings[:, r:]``
    with probabilities ``w = softmax(params[S_r])`` and contributes ``diag(w) - w w^T`` on
    ``S_r`` (it does not depend on which item was chosen, so it is also the expected
    information given the stage sets)."""
    params = np.asarray(params, dtype=float)
    rankings = np.atleast_2d(np.asarray(rankings, dtype=np.int64))
    n = len(params)
    info = np.zeros(n * n)
    diag = np.zeros(n)
    for r in range(rankings.shape[1] - 1):
        s = rankings[:, r:]
        w = softmax(params[s], axis=1)
        diag += np.bincount(s.ravel(), w.ravel(), n)
        key = (s[:, :, None] * n + s[:, None, :]).ravel()
        info -= np.bincount(key, (w[:, :, None] * w[:, None, :]).ravel(), n * n)
    info = info.reshape(n, n)
    info[np.arange(n), np.arange(n)] += diag
    return info


class _PLRater(_RefitRater):
    def __init__(self, n: int, alpha: float, refit_every: int, refit_fraction: float):
        super().__init__(n, alpha, refit_every, refit_fraction)
        self.rankings: list[np.ndarray] = []

    def update(self, ranking: np.ndarray) -> None:
        self.rankings.append(np.asarray(ranking, dtype=np.int64))
        self.info += pl_information(self.mu, ranking[None, :])
        self.pending += 1
        self.n_votes += 1
        self._cov = None

    def _refit(self) -> None:
        from .plackett_luce import fit_plackett_luce

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = fit_plackett_luce(self.n, np.array(self.rankings), alpha=self.alpha,
                                    initial_params=self.mu)
        self.mu = np.asarray(fit.params, dtype=float)
        if fit.hessian is not None:
            self.info = np.array(fit.hessian, dtype=float)
        else:
            self.info = (pl_information(self.mu, np.array(self.rankings))
                         + self.alpha * np.eye(self.n))


class _SkillRater:
    """TrueSkill (Herbrich et al. 2007) via :mod:`prefkit.rank.skill`, one k-way update per
    vote, with TrueSkill's defaults (``beta = 25/6``, ``tau = 25/300``, ``draw_probability =
    0.1``, as K-Sort Arena's ``TrueSkill()`` environment)."""

    def __init__(self, n: int, static: bool = False):
        from .skill import BETA, DRAW_PROBABILITY, TAU, initial_state

        self.state = initial_state(n)
        self.beta, self.draw_probability = BETA, DRAW_PROBABILITY
        self.tau = 0.0 if static else TAU

    def update(self, ranking: np.ndarray) -> None:
        from .skill import rate

        self.state = rate(self.state, ranking, np.arange(len(ranking)), beta=self.beta,
                          tau=self.tau, draw_probability=self.draw_probability)

    def estimate(self) -> np.ndarray:
        return np.asarray(self.state.mu, dtype=float)

    def ucb_inputs(self):
        return self.estimate(), np.asarray(self.state.sigma, dtype=float), 1.0

    def posterior(self):
        f = 1.702 / (np.sqrt(2.0) * self.beta)
        sigma = np.asarray(self.state.sigma, dtype=float)
        return self.estimate() * f, np.diag((sigma * f) ** 2)


def _make_rater(method: str, n: int, alpha: float, refit_every: int, refit_fraction: float):
    if method == "elo":
        return _EloRater(n, alpha)
    if method == "bt":
        return _BTRater(n, alpha, refit_every, refit_fraction)
    if method == "pl":
        return _PLRater(n, alpha, refit_every, refit_fraction)
    if method in ("trueskill", "trueskill_static"):
        return _SkillRater(n, static=method == "trueskill_static")
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class MatchState:
    """What a custom matchmaker (``strategy`` callable) sees before vote ``t + 1``.

    ``mu`` ``[n]`` and ``cov`` ``[n, n]``: the rater's posterior mean and covariance of the
    log-strengths in logits (the inputs of
    :func:`~prefkit.rank.matchmaking.information_gain_match`; for BT / PL the Laplace posterior,
    refitted lazily as for ``"infogain"``). ``pair_counts`` ``[n, n]`` (a read-only copy): how
    often each two items were in the same match (the diagonal: how often each item played).
    ``rng``: the strategy's own random stream (seeded). ``truth`` and ``noise``: the hidden
    log-strengths and the label noise -- only for oracle baselines that estimate what
    matchmaking could do at best; a real matchmaker must not read them.
    """

    k: int
    t: int
    mu: np.ndarray
    cov: np.ndarray
    pair_counts: np.ndarray
    rng: np.random.Generator
    truth: np.ndarray
    noise: float


Strategy = str | Callable[[MatchState], np.ndarray]


def strategy_name(strategy: Strategy) -> str:
    """A strategy's name in tables: the string itself or the callable's ``__name__``."""
    return strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom")


def simulated_truth(n_items: int, seed: int) -> np.ndarray:
    """The hidden log-strengths ``s ~ N(0, 1)`` of :func:`simulate_convergence` for ``(n_items,
    seed)`` (the first of the seed's three random streams)."""
    truth_seq = np.random.SeedSequence(seed).spawn(3)[0]
    return np.random.default_rng(truth_seq).normal(size=n_items)


def _check_items(items, n_items: int, k: int, name: str) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    if (len(items) != k or len(np.unique(items)) != k or items.min() < 0
            or items.max() >= n_items):
        raise ValueError(f"strategy {name!r} must return {k} distinct items in "
                         f"0..{n_items - 1}, got {items.tolist()}")
    return items


def _draw_vote(items: np.ndarray, s: np.ndarray, noise: float,
               rng: np.random.Generator) -> np.ndarray:
    """A ranking (best first) of ``items`` from the truth ``s``, as in the module docstring."""
    k = len(items)
    if k == 2:
        i, j = items
        i_wins = rng.random() < expit(s[i] - s[j])
        if rng.random() < noise:
            i_wins = not i_wins
        return items if i_wins else items[::-1]
    order = items[np.argsort(-(s[items] + rng.gumbel(size=k)))]
    if rng.random() < noise:
        order = items[rng.permutation(k)]
    return order


def simulate_convergence(
    n_items: int,
    *,
    k: int = 2,
    method: str = "pl",
    strategy: Strategy = "infogain",
    noise: float = 0.0,
    max_votes: int | None = None,
    check_every: int | None = None,
    seed: int = 0,
    target_tau: float = 0.9,
    refit_every: int | None = None,
    refit_fraction: float = 0.02,
    alpha: float = 0.1,
    ucb_c: float = 1.0,
    ucb_pseudo_count: float = 1e-5,
    order_weight: bool = False,
    stop_at_target: bool = True,
    hold: float | None = None,
) -> dict:
    """Votes until ``method`` + ``strategy`` ranks ``n_items`` items right (module docstring).

    ``max_votes`` defaults to ``300 * n_items / (1 - noise)^2`` (times ``hold``),
    ``check_every`` to ``max(1, n_items // 2)``. BT / PL refit when the strategy needs estimates
    and at least ``max(refit_every, refit_fraction * votes so far)`` votes came in since the
    last fit (``refit_every`` default ``max(1, n_items // 10)``), and at every check. ``alpha``
    is the Gaussian prior precision of BT / PL (and Elo's pseudo-information for ``infogain``);
    ``ucb_c`` and ``ucb_pseudo_count`` are :func:`~prefkit.rank.matchmaking.ucb_match`'s ``c``
    and ``pseudo_count``, ``order_weight`` that of
    :func:`~prefkit.rank.matchmaking.information_gain_match`. The truth depends only on ``(seed,
    n_items)``; the votes' randomness and the strategy's come from separate streams of ``seed``,
    so methods are compared on the same truths.

    ``hold``: the stricter convergence rule -- ``votes`` is the first check ``c`` from which tau
    stays ``>= target_tau`` at every check until the vote count reaches ``hold * c`` (and at
    least three checks): the ranking is right and *stays* right while the votes grow by that
    factor, so a rater whose estimate keeps wandering (an online filter) is not counted as
    converged at a lucky dip. Such a ``c`` must be at most ``max_votes / hold`` (the default
    ``max_votes`` is multiplied by ``hold``, so ``c`` has the same budget). ``None`` (default):
    the three-checks-in-a-row rule of the module docstring.

    Returns a dict: ``votes`` (int, or None when ``max_votes`` was reached first),
    ``votes_three_checks`` (the three-checks rule's count, also when ``hold`` decides
    ``votes``), ``checks`` (vote counts of the checks) and ``tau`` (tau at each; the run stops
    at the confirming check unless ``stop_at_target=False``), ``final_tau``, ``seconds`` and
    the arguments.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(strategy) and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} or a callable, got "
                         f"{strategy!r}")
    if not 2 <= k <= n_items:
        raise ValueError(f"k must be in 2..n_items={n_items}, got {k}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if hold is not None and not hold > 1.0:
        raise ValueError(f"hold must be > 1 (the factor the votes grow by), got {hold}")
    if max_votes is None:
        max_votes = int(round(300 * (hold or 1.0) * n_items / (1.0 - min(noise, 0.5)) ** 2))
    check_every = max(1, n_items // 2) if check_every is None else int(check_every)
    refit_every = max(1, n_items // 10) if refit_every is None else int(refit_every)
    start = time.perf_counter()
    _, vote_seq, match_seq = np.random.SeedSequence(seed).spawn(3)
    s = simulated_truth(n_items, seed)
    vote_rng = np.random.default_rng(vote_seq)
    match_rng = np.random.default_rng(match_seq)
    rater = _make_rater(method, n_items, alpha, refit_every, refit_fraction)
    pair_counts = np.zeros((n_items, n_items))
    checks: list[int] = []
    taus: list[float] = []
    streak = 0
    three_checks: int | None = None
    votes: int | None = None
    for v in range(1, max_votes + 1):
        if callable(strategy):
            mu, cov = rater.posterior()
            counts = pair_counts.copy()
            counts.setflags(write=False)
            state = MatchState(k=k, t=v - 1, mu=mu, cov=cov, pair_counts=counts,
                               rng=match_rng, truth=s, noise=noise)
            items = _check_items(strategy(state), n_items, k, strategy_name(strategy))
        elif strategy == "random":
            items = random_match(n_items, k, match_rng)
        elif strategy == "ucb":
            mu, sigma, scale = rater.ucb_inputs()
            items = ucb_match(mu, sigma, pair_counts, k, match_rng, t=v - 1, c=ucb_c,
                              scale=scale, pseudo_count=ucb_pseudo_count)
        else:
            mu, cov = rater.posterior()
            items = information_gain_match(mu, cov, k, match_rng, order_weight=order_weight)
        ranking = _draw_vote(items, s, noise, vote_rng)
        rater.update(ranking)
        pair_counts[np.ix_(items, items)] += 1.0
        if v % check_every == 0:
            tau = kendall_tau(rater.estimate(), s)
            checks.append(v)
            taus.append(tau)
            streak = streak + 1 if tau >= target_tau else 0
            if streak >= 3 and three_checks is None:
                three_checks = checks[-3]
            if votes is None:
                if hold is None:
                    votes = three_checks
                elif streak >= 3 and v >= hold * checks[-streak]:
                    votes = checks[-streak]  # the first check of the run at the target
                if votes is not None and stop_at_target:
                    break
    return {
        "votes": votes, "votes_three_checks": three_checks, "hold": hold,
        "checks": checks, "tau": taus,
        "final_tau": taus[-1] if taus else None,
        "n_items": n_items, "k": k, "method": method, "strategy": strategy_name(strategy),
        "noise": noise, "seed": seed, "max_votes": max_votes, "check_every": check_every,
        "target_tau": target_tau, "seconds": time.perf_counter() - start,
    }


def _median_votes(votes: Sequence[int | None]) -> float | None:
    """Median over seeds with a non-converged run counted as infinitely many votes (so the
    median is None when half or more of the runs did not converge)."""
    values = np.array([math.inf if v is None else float(v) for v in votes])
    med = float(np.median(values))
    return None if not math.isfinite(med) else med


def _run_job(job: dict) -> dict:
    job = dict(job)
    return simulate_convergence(job.pop("n_items"), **job)


def convergence_table(
    n_items_list: Iterable[int] = (20, 50),
    ks: Iterable[int] = (2, 4),
    noises: Iterable[float] = (0.0, 0.1, 0.2),
    combos: Iterable[tuple[str, Strategy]] = DEFAULT_COMBOS,
    seeds: Iterable[int] = (0, 1, 2),
    max_votes: int | None = None,
    check_every: int | None = None,
    target_tau: float = 0.9,
    processes: int = 1,
    **kwargs,
) -> list[dict]:
    """One row per (n_items, k, noise, method, strategy): ``votes`` = median over ``seeds``
    of :func:`simulate_convergence`'s ``votes`` (a run that never converged counts as infinity;
    None if the median is), plus ``votes_per_seed``, ``converged`` (how many seeds reached the
    target), ``final_tau_median`` and ``seconds`` (summed over seeds). A ``combos`` strategy may
    be a callable (see :class:`MatchState`; its row is named by :func:`strategy_name`). Extra
    ``kwargs`` go to :func:`simulate_convergence`; ``processes > 1`` runs the simulations in
    that many worker processes (same results). Use ``convergence_table(**QUICK)`` for a fast
    preset."""
    seeds = tuple(seeds)
    cells = [(n_items, k, noise, method, strategy)
             for n_items in n_items_list for k in ks for noise in noises
             for method, strategy in combos]
    jobs = [dict(n_items=n_items, k=k, method=method, strategy=strategy, noise=noise,
                 max_votes=max_votes, check_every=check_every, seed=seed,
                 target_tau=target_tau, **kwargs)
            for n_items, k, noise, method, strategy in cells for seed in seeds]
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            # longest first: the big / noisy / k = 2 cells dominate the wall time
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["n_items"] * (
                1 + jobs[i]["noise"] * 4) / jobs[i]["k"])
            futures = {i: pool.submit(_run_job, jobs[i]) for i in order}
            results = [futures[i].result() for i in range(len(jobs))]
    else:
        results = [_run_job(job) for job in jobs]
    rows = []
    for c, (n_items, k, noise, method, strategy) in enumerate(cells):
        runs = results[c * len(seeds):(c + 1) * len(seeds)]
        votes = [r["votes"] for r in runs]
        three = [r["votes_three_checks"] for r in runs]
        rows.append({
            "n_items": n_items, "k": k, "noise": noise, "method": method,
            "strategy": strategy_name(strategy), "votes": _median_votes(votes),
            "votes_per_seed": votes, "votes_three_checks": _median_votes(three),
            "votes_three_checks_per_seed": three,
            "converged": sum(v is not None for v in votes), "seeds": len(seeds),
            "final_tau_median": float(np.median([r["final_tau"] for r in runs])),
            "max_votes": runs[0]["max_votes"], "target_tau": target_tau,
            "seconds": round(sum(r["seconds"] for r in runs), 3),
        })
    return rows


def plot_convergence(table: Sequence[dict], path: str | Path) -> Path:
    """PNG of median votes to the target (log scale) against noise, one panel per
    (n_items, k), one line per method + strategy; a combination that did not converge is drawn
    as an open marker at its ``max_votes``."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    panels = sorted({(r["n_items"], r["k"]) for r in table})
    combos = list(dict.fromkeys((r["method"], r["strategy"]) for r in table))
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)
    for ax, (n_items, k) in zip(axes[0], panels, strict=True):
        for idx, (method, strategy) in enumerate(combos):
            rows = sorted((r for r in table if (r["n_items"], r["k"], r["method"],
                                                r["strategy"]) == (n_items, k, method, strategy)),
                          key=lambda r: r["noise"])
            if not rows:
                continue
            x = [r["noise"] for r in rows]
            y = [r["votes"] if r["votes"] is not None else np.nan for r in rows]
            line, = ax.plot(x, y, "o-", color=f"C{idx}", label=f"{method} + {strategy}")
            fail = [(r["noise"], r["max_votes"]) for r in rows if r["votes"] is None]
            if fail:
                ax.plot(*zip(*fail, strict=True), "o", mfc="none", color=line.get_color())
        ax.set_yscale("log")
        ax.set_title(f"{n_items} items, k = {k}")
        ax.set_xlabel("label noise")
        ax.grid(alpha=0.3, which="both")
    target = table[0].get("target_tau", 0.9) if table else 0.9
    axes[0][0].set_ylabel(f"median votes to Kendall tau >= {target}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
