import numpy as np
import pytest

from libs.kmeans import (assign_to_centers, check_embeddings, fit_kmeans, nearest_members, summarize_clustering,
                         train_centers)


def _blobs(n=900, k=3, d=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    labels = rng.integers(0, k, n)
    return (centers[labels] + spread * rng.normal(size=(n, d))).astype(np.float32), labels


def test_assignment_is_the_nearest_center_and_center_rows_are_nearest_members():
    x, _ = _blobs()
    km = fit_kmeans(x, 5, spherical=False, random_state=0)
    d2 = ((x[:, None, :].astype(np.float64) - km.centers[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(km.assignment, d2.argmin(1))
    np.testing.assert_allclose(km.sq_distance, d2.min(1), rtol=1e-4, atol=1e-4)
    assert km.sizes.sum() == len(x) and (km.sizes > 0).all()
    np.testing.assert_allclose(km.costs, np.bincount(km.assignment, weights=km.sq_distance))
    for c, row in enumerate(km.center_indices):
        members = np.flatnonzero(km.assignment == c)
        assert row in members
        assert km.sq_distance[row] == km.sq_distance[members].min()


def test_trains_on_every_point_unless_capped():
    """Uncapped, Lloyd converges to the means of ALL points (faiss would otherwise subsample to 256 k)."""
    x, _ = _blobs(n=3000, k=3)
    km = fit_kmeans(x, 3, spherical=False, n_iter=50, random_state=0)
    assert km.n_train_points == 3000
    means = np.stack([x[km.assignment == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(km.centers, means, atol=1e-4)
    capped = fit_kmeans(x, 3, spherical=False, n_iter=50, max_points_per_centroid=4, random_state=0)
    assert capped.n_train_points == 12
    capped_means = np.stack([x[capped.assignment == c].mean(0) for c in range(3)])
    assert np.abs(capped.centers - capped_means).max() > 1e-2      # trained on 12 rows, not all 3000


def test_spherical_normalises_rows_and_centers():
    x, labels = _blobs(d=8)
    km = fit_kmeans(x * 7.0, 3, spherical=True, random_state=0)
    np.testing.assert_allclose(np.linalg.norm(km.centers, axis=1), 1.0, atol=1e-5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert km.sq_distance.max() <= 4.0 + 1e-5                       # distances between unit vectors
    same = fit_kmeans(unit, 3, spherical=True, random_state=0)
    np.testing.assert_array_equal(same.assignment, km.assignment)   # scale does not matter


def test_deterministic_per_seed_and_kmeanspp_recovers_blobs():
    x, labels = _blobs()
    a = fit_kmeans(x, 3, spherical=False, random_state=5)
    b = fit_kmeans(x, 3, spherical=False, random_state=5)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    # the three blobs are found: each cluster is one blob
    for c in range(3):
        assert len(np.unique(labels[a.assignment == c])) == 1


def test_chunked_assignment_matches_one_block():
    x, _ = _blobs(n=301)
    centers, _ = train_centers(check_embeddings(x), 4, spherical=False, random_state=0)
    a1, d1 = assign_to_centers(x, centers, chunk_size=7)
    a2, d2 = assign_to_centers(x, centers, chunk_size=10_000)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)


def test_nearest_members_with_offset_and_absent_clusters():
    assignment = np.array([0, 0, 2, 2, 2])
    sq = np.array([0.5, 0.2, 0.9, 0.1, 0.1])
    rows, best = nearest_members(assignment, sq, 4, offset=100)
    np.testing.assert_array_equal(rows, [101, -1, 103, -1])        # ties: the lowest row
    np.testing.assert_array_equal(best, [0.2, np.inf, 0.1, np.inf])


def test_clear_errors():
    x, _ = _blobs(n=50)
    with pytest.raises(ValueError, match="n_clusters=51 must lie in \\[1, 50\\]"):
        fit_kmeans(x, 51)
    with pytest.raises(ValueError, match="n_clusters=0 must lie in"):
        fit_kmeans(x, 0)
    for bad_value in (np.nan, np.inf):
        bad = x.copy()
        bad[7, 2] = bad_value
        with pytest.raises(ValueError, match="NaN or infinite values in 1 rows \\(first: row 7\\)"):
            fit_kmeans(bad, 3)
    with pytest.raises(ValueError, match="non-empty \\(n, d\\) matrix"):
        fit_kmeans(x[:, 0], 3)
    with pytest.raises(ValueError, match="non-empty \\(n, d\\) matrix"):
        fit_kmeans(np.zeros((0, 4), dtype=np.float32), 1)
    duplicates = np.repeat(np.eye(2, dtype=np.float32), 10, axis=0)    # 2 distinct rows, 3 clusters
    with pytest.raises(ValueError, match="clusters empty.*about 2 distinct rows"):
        fit_kmeans(duplicates, 3, spherical=False)
    with pytest.raises(ValueError, match="all-zero rows"):
        fit_kmeans(np.vstack([x, np.zeros((1, x.shape[1]), dtype=np.float32)]), 3, spherical=True)
    with pytest.raises(ValueError, match="rows have 6 dimensions"):
        assign_to_centers(x, np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="init='best'"):
        fit_kmeans(x, 3, init="best")
    with pytest.raises(ValueError, match="clusters empty"):
        summarize_clustering(np.zeros((3, 2), dtype=np.float32), np.array([0, 0, 1]), np.zeros(3),
                             n_train_points=3, spherical=False)
