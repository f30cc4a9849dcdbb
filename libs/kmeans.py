"""k-means on document embeddings with faiss: training, chunked assignment, nearest real point per center.

The pieces are separate so that a corpus too large for one machine can be handled in
two passes: :func:`train_centers` runs on a sample gathered by a driver, then every
shard calls :func:`assign_to_centers` on its own rows (see ``libs.sampling`` for the
per-shard sums that sensitivity sampling needs). :func:`fit_kmeans` is the one-machine
path that chains them.

Memory: assignment works in chunks of ``chunk_size`` rows and keeps only the nearest
center of each row, so no ``n x k`` distance matrix is ever held.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["INITS", "KMeansResult", "check_embeddings", "train_centers", "assign_to_centers",
           "nearest_members", "fit_kmeans", "summarize_clustering"]

INITS = ("kmeans++", "random")


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """A k-means clustering of ``n`` rows into ``k`` clusters.

    Attributes
    ----------
    centers : float32 (k, d)
        Cluster centers (unit norm when ``spherical``).
    assignment : int64 (n,)
        Index of each row's nearest center.
    sq_distance : float64 (n,)
        Squared Euclidean distance of each row to its own center.
    center_indices : int64 (k,)
        The real row nearest each center among that cluster's members (ties: the lowest row).
    sizes : int64 (k,)
        Rows per cluster (all >= 1).
    costs : float64 (k,)
        k-means cost per cluster, the sum of its rows' squared distances.
    n_train_points : int
        Rows k-means was trained on (``n`` unless ``max_points_per_centroid`` capped it).
    spherical : bool
        Whether the rows were L2-normalised and the centers kept at unit norm.
    """

    centers: np.ndarray
    assignment: np.ndarray
    sq_distance: np.ndarray
    center_indices: np.ndarray
    sizes: np.ndarray
    costs: np.ndarray
    n_train_points: int
    spherical: bool

    @property
    def n_clusters(self) -> int:
        return len(self.centers)

    @property
    def objective(self) -> float:
        """Total k-means cost (the paper's Φ_k for these centers)."""
        return float(self.costs.sum())


def check_embeddings(x: np.ndarray, *, name: str = "embeddings", normalize: bool = False) -> np.ndarray:
    """Validate an ``(n, d)`` embedding matrix and return it as contiguous float32.

    Parameters
    ----------
    x : array (n, d)
    name : how the error messages call ``x``.
    normalize : return the rows scaled to unit L2 norm (a copy only when some row is not
        unit already; zero rows are an error).

    Raises
    ------
    ValueError
        When ``x`` is not a non-empty 2-D matrix, or holds NaN or infinite values.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) matrix, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = _rows_finite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} contain NaN or infinite values in {len(bad)} rows (first: row {bad[0]}); "
                         "re-embed those documents or drop them")
    if normalize:
        norms = _row_norms(x)
        if (norms == 0).any():
            raise ValueError(f"{name} has {int((norms == 0).sum())} all-zero rows (first: row "
                             f"{int(np.flatnonzero(norms == 0)[0])}); spherical k-means needs non-zero rows")
        if np.abs(norms - 1.0).max() > 1e-4:
            x = x / norms[:, None].astype(np.float32)
    return x


def _rows_finite(x: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    return np.concatenate([np.isfinite(x[s:s + chunk_size]).all(axis=1) for s in range(0, len(x), chunk_size)])


def _row_norms(x: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    return np.concatenate([np.linalg.norm(x[s:s + chunk_size].astype(np.float64), axis=1)
                           for s in range(0, len(x), chunk_size)])


def train_centers(x: np.ndarray, n_clusters: int, *, spherical: bool = True, n_iter: int = 20, n_init: int = 1,
                  max_points_per_centroid: int = 0, init: str = "kmeans++", random_state: int = 0,
                  verbose: bool = False) -> tuple[np.ndarray, int]:
    """Lloyd's k-means (faiss) on the rows of ``x``; returns the centers and how many rows trained them.

    Parameters
    ----------
    x : float (n, d)
        Unit rows when ``spherical`` (see :func:`check_embeddings`).
    n_clusters : int, 1 <= n_clusters <= n
    spherical : keep the centers at unit norm after every iteration (cosine geometry).
    n_iter : Lloyd iterations per run.
    n_init : runs from different initialisations; faiss keeps the lowest objective.
    max_points_per_centroid : train on at most this many rows per center, drawn at random
        (0 = every row; faiss's own default would silently subsample to 256 k rows).
    init : "kmeans++" (D²-weighted seeding) or "random" (k distinct rows).
    random_state : seeds the initialisation and any subsampling.

    Returns
    -------
    centers : float32 (n_clusters, d)
    n_train_points : int
    """
    import faiss

    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {INITS}")
    n, d = x.shape
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {n}] (the number of embedded rows); "
                         "lower n_clusters or embed more documents")
    if max_points_per_centroid < 0:
        raise ValueError(f"max_points_per_centroid={max_points_per_centroid} must be >= 0 (0 = all rows)")
    cap = max_points_per_centroid or (n // n_clusters + 1)       # 0: large enough that faiss keeps every row
    kmeans = faiss.Kmeans(d, n_clusters, niter=n_iter, nredo=n_init, spherical=spherical,
                          seed=int(random_state) % (2 ** 31), verbose=verbose,
                          max_points_per_centroid=cap, min_points_per_centroid=1)
    kmeans.cp.init_method = (faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS if init == "kmeans++"
                             else faiss.ClusteringInitMethod_RANDOM)
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32), min(n, cap * n_clusters)


def assign_to_centers(x: np.ndarray, centers: np.ndarray, *, chunk_size: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center of every row, ``chunk_size`` rows at a time (never an ``n x k`` matrix).

    Parameters
    ----------
    x : float32 (n, d)
    centers : float (k, d)

    Returns
    -------
    assignment : int64 (n,)
    sq_distance : float64 (n,)
        Squared Euclidean distance to the assigned center (clipped at 0).
    """
    import faiss

    if centers.ndim != 2 or centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers have shape {centers.shape} but the rows have {x.shape[1]} dimensions")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    index = faiss.IndexFlatL2(centers.shape[1])
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    assignment = np.empty(len(x), dtype=np.int64)
    sq_distance = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), chunk_size):
        dist, nearest = index.search(np.ascontiguousarray(x[start:start + chunk_size]), 1)
        assignment[start:start + chunk_size] = nearest[:, 0]
        sq_distance[start:start + chunk_size] = np.maximum(dist[:, 0], 0.0)
    return assignment, sq_distance


def nearest_members(assignment: np.ndarray, sq_distance: np.ndarray, n_clusters: int, *,
                    offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For each cluster, its member nearest the center.

    Parameters
    ----------
    assignment : int (m,); sq_distance : float (m,)
    offset : added to the returned rows (a shard's first global row).

    Returns
    -------
    rows : int64 (k,)
        ``offset`` + the lowest row reaching the cluster's minimum distance; -1 for a cluster
        with no member here.
    sq : float64 (k,)
        That member's squared distance; ``inf`` for a cluster with no member here.
    """
    sq = np.full(n_clusters, np.inf)
    np.minimum.at(sq, assignment, sq_distance)
    at_min = np.flatnonzero(sq_distance <= sq[assignment])
    rows = np.full(n_clusters, -1, dtype=np.int64)
    rows[assignment[at_min[::-1]]] = at_min[::-1] + offset      # reversed: the lowest row is written last
    return rows, sq


def fit_kmeans(x: np.ndarray, n_clusters: int, *, spherical: bool = True, n_iter: int = 20, n_init: int = 1,
               max_points_per_centroid: int = 0, init: str = "kmeans++", chunk_size: int = 16384,
               random_state: int = 0, verbose: bool = False) -> KMeansResult:
    """k-means of all rows of ``x`` (faiss), their assignment, and each center's nearest real row.

    Parameters
    ----------
    x : float (n, d)
        Embeddings; L2-normalised first when ``spherical``.
    n_clusters : int, 1 <= n_clusters <= n
    spherical, n_iter, n_init, max_points_per_centroid, init, random_state :
        see :func:`train_centers`.
    chunk_size : rows per assignment chunk.

    Returns
    -------
    KMeansResult

    Raises
    ------
    ValueError
        On a malformed or non-finite ``x``, ``n_clusters`` outside ``[1, n]``, or when a
        cluster ends up empty (the data has fewer distinct rows than clusters).
    """
    x = check_embeddings(x, normalize=spherical)
    n = len(x)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise ValueError(f"n_clusters must be an integer, got {n_clusters!r}")
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must lie in [1, {n}] (the number of embedded rows); "
                         "lower n_clusters or embed more documents")
    centers, n_train = train_centers(x, int(n_clusters), spherical=spherical, n_iter=n_iter, n_init=n_init,
                                     max_points_per_centroid=max_points_per_centroid, init=init,
                                     random_state=random_state, verbose=verbose)
    assignment, sq_distance = assign_to_centers(x, centers, chunk_size=chunk_size)
    return summarize_clustering(centers, assignment, sq_distance, n_train_points=n_train, spherical=spherical,
                                x=x)


def summarize_clustering(centers: np.ndarray, assignment: np.ndarray, sq_distance: np.ndarray, *,
                         n_train_points: int, spherical: bool, x: np.ndarray | None = None) -> KMeansResult:
    """A :class:`KMeansResult` from centers and every row's assignment (e.g. gathered from shards).

    Parameters
    ----------
    centers : float32 (k, d); assignment : int (n,); sq_distance : float (n,)
    x : the rows (n, d), only used to word the error about empty clusters.

    Raises
    ------
    ValueError
        When a cluster has no row.
    """
    n_clusters = len(centers)
    sizes = np.bincount(assignment, minlength=n_clusters).astype(np.int64)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        hint = ""
        if x is not None:
            hint = f"; the data has about {len(np.unique(x[:200_000], axis=0))} distinct rows"
        raise ValueError(f"k-means left {len(empty)} of {n_clusters} clusters empty (first: cluster {empty[0]})"
                         f"{hint}: lower n_clusters (empty clusters have no center row to query)")
    center_indices, _ = nearest_members(assignment, sq_distance, n_clusters)
    costs = np.bincount(assignment, weights=sq_distance, minlength=n_clusters)
    return KMeansResult(centers=centers, assignment=assignment.astype(np.int64), sq_distance=sq_distance,
                        center_indices=center_indices, sizes=sizes, costs=costs, n_train_points=int(n_train_points),
                        spherical=spherical)
