"""The numpy graph and special-function helpers of the leaderboard path equal scipy's."""

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit as scipy_expit
from scipy.stats import norm

from prefkit.rank._math import expit, normal_quantile
from prefkit.rank.graph import components, strongly_connected


@pytest.mark.parametrize("seed", range(40))
def test_components_and_strong_connectivity_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    n_edges = int(rng.integers(0, 3 * n))
    src, dst = rng.integers(0, n, n_edges), rng.integers(0, n, n_edges)
    if seed % 4 == 0:  # a long chain: many sweeps
        src, dst = np.arange(n - 1)[::-1], np.arange(1, n)[::-1]
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    expected = connected_components(graph, directed=False)[1]
    assert np.array_equal(components(n, src, dst), expected)
    members = np.flatnonzero(rng.random(n) < 0.7) if seed % 3 else np.arange(n)
    sub = graph.tocsr()[members][:, members]
    strong = len(members) < 2 or connected_components(sub, directed=True,
                                                      connection="strong")[0] == 1
    assert strongly_connected(n, src, dst, members) == strong


def test_expit_and_normal_quantile():
    x = np.linspace(-700, 700, 20001)
    assert np.allclose(expit(x), scipy_expit(x), rtol=1e-15, atol=0)
    assert expit(np.array([-1e5, 1e5])).tolist() == [0.0, 1.0]
    for p in (0.975, 0.5, 0.001):
        assert normal_quantile(p) == pytest.approx(norm.ppf(p), rel=1e-12)
