"""k-means on embeddings with faiss, chunked assignment, and each center's nearest real point."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["KMeansResult", "fit_kmeans", "assign"]


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """centers (k, d) float32; assignment (n,) int64; sq_distance (n,) float64 squared distance to the
    own center; center_indices (k,) the real point nearest each center; sizes (k,)."""

    centers: np.ndarray
    assignment: np.ndarray
    sq_distance: np.ndarray
    center_indices: np.ndarray
    sizes: np.ndarray


def _check_embeddings(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (n, d) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"embeddings contain NaN or infinite values in {bad} rows; re-embed or drop those rows")
    return np.ascontiguousarray(x, dtype=np.float32)


def assign(x: np.ndarray, centers: np.ndarray, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center of every row, in chunks (never an n x k matrix in memory).

    Returns assignment (n,) int64 and squared distance (n,) float64.
    """
    import faiss

    x = _check_embeddings(x)
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk):
        d, i = index.search(x[start:start + chunk], 1)
        labels[start:start + chunk], dist[start:start + chunk] = i[:, 0], np.maximum(d[:, 0], 0.0)
    return labels, dist


def fit_kmeans(x: np.ndarray, k: int, *, spherical: bool = True, n_iter: int = 20, n_init: int = 3,
               max_points_per_centroid: int = 0, random_state: int = 0) -> KMeansResult:
    """Lloyd's k-means (faiss) on all rows of ``x``.

    Parameters
    ----------
    x : float (n, d)
    k : number of clusters, 1 <= k <= n
    spherical : normalise the centers to unit norm after each iteration (for cosine geometry)
    n_init : runs from different random initialisations; the lowest objective wins
    max_points_per_centroid : train on at most this many points per center (0 = all points;
        faiss's own default silently subsamples to 256 k)
    """
    import faiss

    x = _check_embeddings(x)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"n_clusters={k} must lie in [1, {n}] (the number of embedded documents)")
    cap = max_points_per_centroid or (n // k + 1)
    km = faiss.Kmeans(d, k, niter=n_iter, nredo=n_init, spherical=spherical, seed=random_state, verbose=False,
                      max_points_per_centroid=cap, min_points_per_centroid=1)
    km.train(x)
    centers = km.centroids.copy()
    labels, dist = assign(x, centers)
    sizes = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        raise ValueError(f"k-means left {len(empty)} of {k} clusters empty (e.g. cluster {empty[0]}): the data has "
                         "fewer distinct points than clusters; lower n_clusters")
    center_indices = np.empty(k, dtype=np.int64)
    best = np.full(k, np.inf)
    np.minimum.at(best, labels, dist)                        # per-cluster minimum distance
    hit = dist <= best[labels]
    center_indices[labels[hit][::-1]] = np.flatnonzero(hit)[::-1]   # first row reaching the minimum
    return KMeansResult(centers=centers, assignment=labels, sq_distance=dist, center_indices=center_indices,
                        sizes=sizes)
