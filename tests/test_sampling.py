import numpy as np
import pytest

from libs.kmeans import fit_kmeans
from libs.sampling import (CountingLoss, collapse, estimate_lambda, kcenter_sample, sensitivity_sample,
                           stratified_sample, uniform_sample)


def _clustered(n=600, k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 10
    labels = rng.integers(0, k, n)
    x = (centers[labels] + rng.normal(size=(n, d))).astype(np.float32)
    losses = 1.0 + labels * 0.5 + 0.3 * ((x - centers[labels]) ** 2).sum(1) / d
    return x, losses


@pytest.fixture(scope="module")
def setup():
    x, losses = _clustered()
    km = fit_kmeans(x, 6, spherical=False, random_state=0)
    return x, losses, km


def test_kmeans_assignment_and_nearest_points(setup):
    x, _, km = setup
    assert km.sizes.sum() == len(x) and (km.sizes > 0).all()
    d = ((x[:, None, :] - km.centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(km.assignment, d.argmin(1))
    for c, i in enumerate(km.center_indices):
        members = np.flatnonzero(km.assignment == c)
        assert i in members and d[i, c] == pytest.approx(d[members, c].min(), rel=1e-5)


def test_sensitivity_sampling_is_unbiased(setup):
    _, losses, km = setup
    center_loss = losses[km.center_indices]
    estimates = [sensitivity_sample(km.assignment, km.sq_distance, center_loss, 0.3, 60, random_state=s)
                 .estimate(losses) for s in range(2000)]
    mean, se = np.mean(estimates), np.std(estimates) / np.sqrt(len(estimates))
    assert abs(mean - losses.sum()) < 4 * se


@pytest.mark.parametrize("draw", [
    lambda km, n, s: uniform_sample(n, 60, random_state=s),
    lambda km, n, s: stratified_sample(km.assignment, 60, random_state=s),
])
def test_baselines_are_unbiased(setup, draw):
    _, losses, km = setup
    estimates = [draw(km, len(losses), s).estimate(losses) for s in range(2000)]
    assert abs(np.mean(estimates) - losses.sum()) < 4 * np.std(estimates) / np.sqrt(2000)


def test_sensitivity_beats_uniform_when_loss_follows_the_clusters(setup):
    _, losses, km = setup
    center_loss = losses[km.center_indices]
    lam = estimate_lambda(center_loss, km.assignment, km.sq_distance, lambda r: losses[r], per_cluster=5,
                          rng=np.random.default_rng(0))
    sens = [abs(sensitivity_sample(km.assignment, km.sq_distance, center_loss, lam, 30, random_state=s)
                .estimate(losses) / losses.sum() - 1) for s in range(300)]
    unif = [abs(uniform_sample(len(losses), 30, random_state=s).estimate(losses) / losses.sum() - 1)
            for s in range(300)]
    assert np.median(sens) < 0.7 * np.median(unif)


def test_with_replacement_determinism_and_probabilities(setup):
    _, losses, km = setup
    a = sensitivity_sample(km.assignment, km.sq_distance, losses[km.center_indices], 0.3, 500, random_state=3)
    b = sensitivity_sample(km.assignment, km.sq_distance, losses[km.center_indices], 0.3, 500, random_state=3)
    np.testing.assert_array_equal(a.rows, b.rows)
    assert len(np.unique(a.rows)) < len(a.rows)             # with replacement: repeats at this budget
    assert a.probabilities.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(a.weights, 1 / (500 * a.probabilities[a.rows]))
    rows, w = collapse(a)
    assert len(rows) == len(np.unique(a.rows)) and w.sum() == pytest.approx(a.weights.sum())


def test_distance_only_limit(setup):
    """Λ → ∞ gives p ∝ ‖e − c‖²: the same distribution as a huge Λ."""
    _, losses, km = setup
    cl = losses[km.center_indices]
    far = sensitivity_sample(km.assignment, km.sq_distance, cl, 1e9, 10, random_state=0).probabilities
    limit = sensitivity_sample(km.assignment, km.sq_distance, cl, 0, 10, distance_only=True,
                               random_state=0).probabilities
    np.testing.assert_allclose(far, limit, rtol=1e-5, atol=1e-12)


def test_kcenter_covers_and_weighs_everything(setup):
    x, _, _ = setup
    s = kcenter_sample(x, 20, random_state=0)
    assert len(np.unique(s.rows)) == 20 and s.weights.sum() == len(x)


def test_counting_loss_counts_distinct_queries():
    c = CountingLoss(lambda r: r * 1.0)
    c(np.array([1, 2, 3]))
    c(np.array([3, 4]))
    assert c.n_queries == 4


def test_clear_errors(setup):
    x, losses, km = setup
    with pytest.raises(ValueError, match="budget=601 must lie in"):
        uniform_sample(600, 601)
    with pytest.raises(ValueError, match="n_clusters=700 must lie in"):
        fit_kmeans(x, 700)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 rows"):
        fit_kmeans(bad, 3)
    with pytest.raises(ValueError, match="clusters empty"):
        fit_kmeans(np.zeros((10, 2), dtype=np.float32) + np.arange(2)[None], 3)
    with pytest.raises(ValueError, match="sq_distance has 5 rows"):
        sensitivity_sample(km.assignment, km.sq_distance[:5], losses[km.center_indices], 0.1, 10)
