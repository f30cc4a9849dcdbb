import numpy as np
import pytest

from libs.kmeans import fit_kmeans
from libs.sampling import (DEFAULT_MIXTURE, CountingLoss, Sample, cluster_levels, estimate_lambda, holder_ratios,
                           kcenter_sample, merge_shard_stats, sensitivity_sample, sensitivity_sampling,
                           sensitivity_sampling_sharded, shard_stats, shard_totals, stratified_sample, uniform_sample,
                           with_replacement_std, without_replacement_std)

N_SEEDS = 1500


@pytest.fixture(scope="module")
def data():
    """600 rows in 6 clusters; the loss grows with the cluster id and the distance to the center."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 8)) * 10
    labels = rng.integers(0, 6, 600)
    x = (centers[labels] + rng.normal(size=(600, 8))).astype(np.float32)
    km = fit_kmeans(x, 6, spherical=False, n_init=3, random_state=0)
    losses = 1.0 + 0.5 * km.assignment + 0.05 * km.sq_distance + 0.1 * rng.random(600)
    return x, km, losses


def _lookup(losses):
    return lambda rows: losses[rows]


def _assert_unbiased(estimates, truth):
    estimates = np.asarray(estimates)
    se = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) < 4 * se, (estimates.mean(), truth, se)


@pytest.mark.parametrize("kwargs", [dict(), dict(lambda_=0.3), dict(include_queried=False),
                                    dict(distance_only=True), dict(distance_only=True, include_queried=False)],
                         ids=["estimated-lambda", "given-lambda", "literal-algorithm-1", "distance-only",
                              "distance-only-literal"])
def test_sensitivity_sampling_is_unbiased(data, kwargs):
    _, km, losses = data
    estimates = [sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, random_state=s, **kwargs)
                 .sample.estimate(losses) for s in range(N_SEEDS)]
    _assert_unbiased(estimates, losses.sum())


@pytest.mark.parametrize("draw", [
    lambda km, s: uniform_sample(600, 40, random_state=s),
    lambda km, s: uniform_sample(600, 40, replace=False, random_state=s),
    lambda km, s: stratified_sample(km.assignment, 40, random_state=s),
], ids=["uniform", "uniform-without-replacement", "stratified"])
def test_baselines_are_unbiased(data, draw):
    _, km, losses = data
    _assert_unbiased([draw(km, s).estimate(losses) for s in range(N_SEEDS)], losses.sum())


def test_spread_matches_the_exact_with_replacement_variance(data):
    _, km, losses = data
    results = [sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, lambda_=0.05,
                                    random_state=s) for s in range(N_SEEDS)]
    empirical = np.std([r.sample.estimate(losses) for r in results])
    s0 = results[0].sample
    exact = with_replacement_std(losses, s0.probabilities, s0.n_draws, s0.fixed_rows)
    assert empirical == pytest.approx(exact, rel=0.1)
    uniform = with_replacement_std(losses, np.full(600, 1 / 600), 40)
    assert exact < 0.5 * uniform                 # the proxy follows this loss closely: far better than uniform


def test_determinism_with_replacement_weights_and_budget(data):
    _, km, losses = data
    a = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 300, random_state=3)
    b = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 300, random_state=3)
    c = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 300, random_state=4)
    np.testing.assert_array_equal(a.sample.rows, b.sample.rows)
    assert a.lambda_ == b.lambda_ and not np.array_equal(a.sample.rows, c.sample.rows)
    s = a.sample
    assert s.n_draws == 300 - 6 and s.size == 300                  # k = 6 center rows + the draws
    assert len(np.unique(s.rows)) < s.n_draws                      # drawn with replacement: repeats
    np.testing.assert_array_equal(s.fixed_rows, np.sort(km.center_indices))
    assert s.probabilities[s.fixed_rows].sum() == 0 and s.probabilities.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(s.weights, 1.0 / (s.n_draws * s.probabilities[s.rows]))
    rows, weights = s.selected()
    assert len(rows) == len(np.unique(np.concatenate([s.rows, s.fixed_rows])))
    assert weights.sum() == pytest.approx(s.weights.sum() + 6)
    assert weights[np.searchsorted(rows, km.center_indices)] == pytest.approx(np.ones(6))
    assert a.n_loss_queries == 6 + 12 and len(a.probe_rows) == 12  # centers + 2 probes per cluster
    assert not set(a.probe_rows) & set(km.center_indices)


def test_distance_only_limit(data):
    """Λ → ∞ gives p ∝ ‖e − c‖²: a huge Λ and distance_only draw the same rows with the same weights."""
    _, km, losses = data
    for include in (True, False):
        far = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 50, lambda_=1e12,
                                   include_queried=include, random_state=7)
        limit = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 50, distance_only=True,
                                     include_queried=include, random_state=7)
        np.testing.assert_allclose(far.sample.probabilities, limit.sample.probabilities, rtol=1e-6, atol=1e-15)
        common = min(far.sample.n_draws, limit.sample.n_draws)   # literal: distance-only spends no budget on centers
        np.testing.assert_array_equal(far.sample.rows[:common], limit.sample.rows[:common])
        assert limit.n_loss_queries == 0 and limit.lambda_ == np.inf
    assert limit.sample.n_draws == 50 and far.sample.n_draws == 44
    pure = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 50, distance_only=True,
                                include_queried=False, mixture=0.0, random_state=7).sample.probabilities
    np.testing.assert_allclose(pure, km.sq_distance / km.sq_distance.sum(), rtol=1e-4)
    a = DEFAULT_MIXTURE                                             # the mixture adds a/n to (1 - a) of it
    np.testing.assert_allclose(limit.sample.probabilities, a / 600 + (1 - a) * pure, rtol=1e-4)


@pytest.mark.parametrize("bounds", [[0, 600], [0, 200, 400, 600], [0, 7, 8, 300, 600]],
                         ids=["1-shard", "3-even", "4-uneven"])
def test_sharded_two_pass_matches_one_machine(data, bounds):
    _, km, losses = data
    one = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 120, random_state=11)
    shards = [(km.assignment[a:b], km.sq_distance[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    many = sensitivity_sampling_sharded(shards, _lookup(losses), 120, n_clusters=6, random_state=11)
    np.testing.assert_array_equal(many.center_indices, one.center_indices)
    np.testing.assert_array_equal(many.probe_rows, one.probe_rows)
    assert many.lambda_ == one.lambda_ and many.n_loss_queries == one.n_loss_queries
    np.testing.assert_allclose(many.sample.probabilities, one.sample.probabilities, rtol=1e-12)
    np.testing.assert_array_equal(many.sample.rows, one.sample.rows)      # same seed, same draws
    np.testing.assert_allclose(many.sample.weights, one.sample.weights, rtol=1e-12)


def test_per_shard_sums_are_the_sums_of_the_scores(data):
    _, km, losses = data
    center_loss = losses[km.center_indices]
    stats = [shard_stats(km.assignment[a:b], km.sq_distance[a:b], 6, offset=a) for a, b in [(0, 250), (250, 600)]]
    plan = merge_shard_stats(stats)
    np.testing.assert_array_equal(plan.sizes, km.sizes)
    np.testing.assert_array_equal(plan.center_indices, km.center_indices)
    known = km.center_indices
    totals, phi = shard_totals(stats, center_loss, 0.2, known, np.arange(6), km.sq_distance[known], floor=0.0)
    score = center_loss[km.assignment] + 0.2 * km.sq_distance
    score[known] = 0
    np.testing.assert_allclose(totals, [score[:250].sum(), score[250:].sum()], rtol=1e-10)
    assert phi == 0.0


def test_sampling_step_alone_with_given_center_losses(data):
    _, km, losses = data
    s = sensitivity_sample(km.assignment, km.sq_distance, losses[km.center_indices], 0.1, 80, random_state=0)
    assert isinstance(s, Sample) and s.n_draws == 80 and len(s.fixed_rows) == 0
    expected = losses[km.center_indices][km.assignment] + 0.1 * km.sq_distance
    np.testing.assert_allclose(s.probabilities, expected / expected.sum(), rtol=1e-5)


def test_estimate_lambda_recovers_an_exact_holder_constant():
    rng = np.random.default_rng(0)
    sq = rng.random(50) + 0.01
    center = rng.random(50) + 1
    assert estimate_lambda(center + 0.7 * sq, center, sq) == pytest.approx(0.7)
    assert estimate_lambda(center, center, np.zeros(50)) == 0.0          # no informative probe
    ratios = holder_ratios(np.array([1.0, 2.0, 1.5]), np.array([0, 0, 0]), np.array([0.0, 4.0, 1.0]),
                           np.array([0]))
    np.testing.assert_allclose(ratios, [1.0 / 4.0, 0.5 / 1.0])


def test_sensitivity_beats_uniform_when_the_loss_follows_the_clusters(data):
    _, km, losses = data
    sens = [abs(sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, random_state=s)
                .sample.estimate(losses) / losses.sum() - 1) for s in range(300)]
    unif = [abs(uniform_sample(600, 40, random_state=s).estimate(losses) / losses.sum() - 1) for s in range(300)]
    assert np.median(sens) < 0.7 * np.median(unif)


def test_stratified_allocation_and_weights(data):
    _, km, _ = data
    s = stratified_sample(km.assignment, 20, random_state=0)
    assert s.n_draws == 20 and len(np.unique(s.rows)) == 20        # without replacement within a cluster
    per_cluster = np.bincount(km.assignment[s.rows], minlength=6)
    assert (per_cluster >= 1).all()
    np.testing.assert_allclose(s.weights, (km.sizes / per_cluster)[km.assignment[s.rows]])
    assert s.probabilities.sum() == pytest.approx(1.0)


def test_kcenter_greedy_picks_farthest_points_and_covers_everything(data):
    x, _, _ = data
    s = kcenter_sample(x, 25, random_state=0)
    assert len(np.unique(s.rows)) == 25 and s.weights.sum() == len(x)
    d_first = ((x - x[s.rows[0]]) ** 2).sum(1)
    assert s.rows[1] == np.argmax(d_first)                          # the second pick is the farthest row
    same = np.repeat(x[:3], 4, axis=0)                              # 3 distinct rows: picks stay distinct
    assert len(np.unique(kcenter_sample(same, 5).rows)) == 5


def test_counting_loss_caches_and_counts_distinct_rows():
    calls = []
    counting = CountingLoss(lambda rows: (calls.append(len(rows)), rows * 1.0)[1], n_rows=10)
    np.testing.assert_array_equal(counting(np.array([1, 2, 3])), [1, 2, 3])
    np.testing.assert_array_equal(counting(np.array([3, 4, 4])), [3, 4, 4])
    assert counting.n_queries == 4 and calls == [3, 1]
    with pytest.raises(IndexError):
        counting(np.array([10]))


def test_clear_errors(data):
    x, km, losses = data
    f = _lookup(losses)
    with pytest.raises(ValueError, match="budget=601 is larger than the data \\(600 rows\\)"):
        uniform_sample(600, 601)
    with pytest.raises(ValueError, match="budget=601 is larger than the data"):
        sensitivity_sampling(km.assignment, km.sq_distance, f, 601)
    with pytest.raises(ValueError, match="budget=6 leaves no draws after the 6 center rows"):
        sensitivity_sampling(km.assignment, km.sq_distance, f, 6)
    with pytest.raises(ValueError, match="assignment has 600 rows but sq_distance has 5"):
        sensitivity_sampling(km.assignment, km.sq_distance[:5], f, 40)
    with pytest.raises(ValueError, match="2 of 8 clusters are empty \\(first: cluster 6\\)"):
        sensitivity_sampling(km.assignment, km.sq_distance, f, 40, n_clusters=8)
    with pytest.raises(ValueError, match="clusters are empty"):
        stratified_sample(km.assignment, 40, n_clusters=7)
    with pytest.raises(ValueError, match="budget=3 is smaller than the 6 clusters"):
        stratified_sample(km.assignment, 3)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        kcenter_sample(bad, 5)
    with pytest.raises(ValueError, match="lambda_=-1"):
        sensitivity_sampling(km.assignment, km.sq_distance, f, 40, lambda_=-1.0)
    with pytest.raises(ValueError, match="returned 1 losses for 6 rows"):
        sensitivity_sampling(km.assignment, km.sq_distance, lambda rows: np.ones(1), 40)
    with pytest.raises(ValueError, match="NaN or infinite losses"):
        sensitivity_sampling(km.assignment, km.sq_distance, lambda rows: np.full(len(rows), np.nan), 40)
    with pytest.raises(ValueError, match="non-negative losses"):
        sensitivity_sampling(km.assignment, km.sq_distance, lambda rows: -np.ones(len(rows)), 40)
    with pytest.raises(ValueError, match="losses has shape \\(3,\\), expected \\(600,\\)"):
        uniform_sample(600, 10).estimate(np.ones(3))
    with pytest.raises(ValueError, match="budget must be an integer"):
        uniform_sample(600, 1.5)


# ----------------------------------------------------------------------------------------------
# issue 13: the robust proxy, the mixture's bound, equal-cost accounting, exact standard deviations

def _low_center_losses(km, losses, n_low, value=0.01):
    """The adversary of a one-loss proxy: the center rows of ``n_low`` clusters have a near-zero loss."""
    bad = losses.copy()
    bad[km.center_indices[:n_low]] = value
    return bad


@pytest.mark.parametrize("a", [0.1, 0.2, 0.5])
def test_mixture_bounds_the_variance_on_an_adversarial_loss(data, a):
    """p >= a/n_d: the second moment is at most 1/a times uniform's, and so is the self-normalised variance."""
    _, km, losses = data
    bad = _low_center_losses(km, losses, 2)
    bad[km.assignment == 0] *= 30.0                          # and a cluster far costlier than its center says
    naive = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(bad), 60, level="center", mixture=0.0,
                                 lambda_=0.0, random_state=0).sample      # the proxy = the center's loss alone
    mixed = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(bad), 60, level="center", mixture=a,
                                 lambda_=0.0, random_state=0).sample
    for s in (naive, mixed):
        drawable = np.setdiff1d(np.arange(600), s.fixed_rows)
        p, loss = s.probabilities[drawable] / s.probabilities[drawable].sum(), bad[drawable]
        nd, mu = len(drawable), bad[drawable].mean()
        second = (loss ** 2 / p).sum() / (nd * (loss ** 2).sum())                   # ratio to uniform's
        self_normalised = ((loss - mu) ** 2 / p).sum() / (nd * ((loss - mu) ** 2).sum())
        if s is mixed:
            assert p.min() >= a / nd * (1 - 1e-12)
            assert second <= 1 / a + 1e-9 and self_normalised <= 1 / a + 1e-9
        else:
            assert max(second, self_normalised) > 1 / a             # the bound is the mixture's doing
    # the plain estimate's variance, from the second-moment bound: ((n_d/a) Σ ℓ² − T²) / s
    drawable = np.setdiff1d(np.arange(600), mixed.fixed_rows)
    loss = bad[drawable]
    bound = ((len(drawable) / a) * (loss ** 2).sum() - loss.sum() ** 2) / mixed.n_draws
    assert mixed.exact_std(bad) ** 2 <= bound and mixed.exact_std(bad) < naive.exact_std(bad)


@pytest.mark.parametrize("n_low", [1, 3])
def test_robust_proxy_survives_low_loss_centers(n_low):
    """1 or 3 of 50 clusters whose center row has a near-zero loss: the robust proxy stays near uniform."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 8)).astype(np.float32)
    km = fit_kmeans(x, 50, spherical=False, n_iter=10, random_state=0)
    losses = 6.7 + 0.3 * rng.standard_normal(5000)                   # the default corpus's level and spread
    bad = _low_center_losses(km, losses, n_low)
    uniform = without_replacement_std(bad, 250)
    stds = {}
    for name, kwargs in {"center": dict(level="center", mixture=0.0), "robust": dict()}.items():
        r = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(bad), 250, random_state=0, **kwargs)
        stds[name] = r.sample.exact_std(bad) / uniform
    assert stds["center"] > 3.0                                       # the fragile proxy blows up
    assert stds["robust"] <= 1.5


def test_cluster_levels_use_every_queried_loss_and_shrink():
    center = np.array([1.0, 5.0, 3.0])
    probe_loss, probe_clusters = np.array([3.0, 5.0, 5.0, 3.0]), np.array([0, 0, 1, 2])
    np.testing.assert_allclose(cluster_levels(center, probe_loss, probe_clusters, level="center"), center)
    means = np.array([3.0, 5.0, 3.0])
    np.testing.assert_allclose(cluster_levels(center, probe_loss, probe_clusters, level="mean"), means)
    shrunk = cluster_levels(center, probe_loss, probe_clusters, level="shrunk")
    # pooled within variance 8/4 = 2; noise of each mean 2/m = (2/3, 1, 1); between-mean variance 4/3
    tau2 = 4 / 3 - np.mean([2 / 3, 1, 1])
    b = tau2 / (tau2 + np.array([2 / 3, 1, 1]))
    np.testing.assert_allclose(shrunk, 11 / 3 + b * (means - 11 / 3))
    # means (3, 1) differ less than their noise (within variance 5, noise 2.5 > between 2): the corpus mean
    flat = cluster_levels(np.array([1.0, 2.0]), np.array([5.0, 0.0]), np.array([0, 1]))
    np.testing.assert_allclose(flat, [2.0, 2.0])


def test_equal_cost_accounting(data):
    """Budget = center rows + draws; loss queries = centers + probes; uniform at equal queries gets both."""
    _, km, losses = data
    for probes in (1, 3):
        r = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 80, probes_per_cluster=probes,
                                 random_state=2)
        assert r.sample.size == 80 and len(r.sample.fixed_rows) == 6 and r.sample.n_draws == 74
        assert len(r.probe_rows) == 6 * probes and r.n_loss_queries == 6 + 6 * probes
        assert not set(r.probe_rows) & set(r.center_indices)
        np.testing.assert_array_equal(np.bincount(r.probe_clusters, minlength=6), np.full(6, probes))
        # every queried loss reaches its cluster's level
        assert r.levels.shape == (6,)
        lv = cluster_levels(losses[r.center_indices], losses[r.probe_rows], r.probe_clusters,
                            cluster_sizes=r.cluster_sizes)
        np.testing.assert_allclose(r.levels, lv)
        equal_queries = uniform_sample(600, r.sample.size + len(r.probe_rows), random_state=2)
        assert equal_queries.size == 80 + 6 * probes


@pytest.mark.parametrize("draw", [
    lambda km, s: uniform_sample(600, 40, random_state=s),
    lambda km, s: uniform_sample(600, 40, replace=True, random_state=s),
    lambda km, s: stratified_sample(km.assignment, 40, random_state=s),
    lambda km, s: sensitivity_sampling(km.assignment, km.sq_distance, lambda r: np.ones(len(r)), 40,
                                       random_state=0).sample,
], ids=["uniform", "uniform-with-replacement", "stratified", "sensitivity"])
def test_exact_std_matches_the_spread_over_draws(data, draw):
    _, km, losses = data
    if draw(km, 0).design == "with_replacement" and len(draw(km, 0).fixed_rows):     # sensitivity: redraw only
        base = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, random_state=0).sample
        samples = [sensitivity_sample(km.assignment, km.sq_distance, np.ones(6), 0.0, 34, random_state=s,
                                      known_rows=base.fixed_rows) for s in range(N_SEEDS)]
    else:
        samples = [draw(km, s) for s in range(N_SEEDS)]
    empirical = np.std([s.estimate(losses) for s in samples])
    assert empirical == pytest.approx(samples[0].exact_std(losses), rel=0.1)


def test_uniform_baseline_draws_distinct_rows():
    for seed in range(20):
        s = uniform_sample(600, 450, random_state=seed)
        assert len(np.unique(s.rows)) == 450 and s.design == "without_replacement"
    # the exact std without replacement carries the finite-population factor
    loss = np.arange(10.0)
    assert without_replacement_std(loss, 10) == 0.0
    assert without_replacement_std(loss, 4) == pytest.approx(np.sqrt(100 * 0.6 * loss.var(ddof=1) / 4))


def test_empty_shard_works(data):
    _, km, losses = data
    one = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 100, random_state=5)
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0))
    for shards in ([empty, (km.assignment, km.sq_distance)], [(km.assignment[:300], km.sq_distance[:300]), empty,
                                                              (km.assignment[300:], km.sq_distance[300:]), empty]):
        many = sensitivity_sampling_sharded(shards, _lookup(losses), 100, n_clusters=6, random_state=5)
        np.testing.assert_array_equal(many.sample.rows, one.sample.rows)
        np.testing.assert_allclose(many.sample.probabilities, one.sample.probabilities, rtol=1e-12)
    untyped = (np.array([]), np.array([]))                     # np.array([]) is float: still an empty shard
    many = sensitivity_sampling_sharded([(km.assignment, km.sq_distance), untyped], _lookup(losses), 100,
                                        random_state=5)
    np.testing.assert_array_equal(many.sample.rows, one.sample.rows)


def test_new_clear_errors(data):
    _, km, losses = data
    negative_probes = losses.copy()
    r = sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, random_state=0)
    negative_probes[r.probe_rows[3]] = -0.5
    with pytest.raises(ValueError, match=f"negative losses at probe rows \\[{r.probe_rows[3]}\\]"):
        sensitivity_sampling(km.assignment, km.sq_distance, _lookup(negative_probes), 40, random_state=0)
    with pytest.raises(ValueError, match="floor=0 must be > 0"):
        sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, floor=0)
    with pytest.raises(ValueError, match="probes_per_cluster=0 must be >= 1"):
        sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, probes_per_cluster=0)
    with pytest.raises(ValueError, match="probes_per_cluster=0 must be >= 1"):
        sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, probes_per_cluster=0, lambda_=0.1)
    for a in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"mixture={a} must lie in \\[0, 1\\)"):
            sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, mixture=a)
    with pytest.raises(ValueError, match="level='median' is not one of"):
        sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, level="median")
    # distance-only needs no loss, hence no probe
    sensitivity_sampling(km.assignment, km.sq_distance, _lookup(losses), 40, probes_per_cluster=0, distance_only=True)
