"""Sensitivity sampling (Axiotis et al., ICML 2024, Algorithm 1) and the baselines behind the same API.

Algorithm 1, as implemented here, on a k-means clustering of the embeddings:

1. query the reference model's loss ℓ(c_i) at each cluster's nearest real row (k queries);
2. proxy loss of every row e of cluster i: ℓ̂(e) = ℓ(c_i) + Λ·‖e − c_i‖², with Λ given or
   estimated from a few extra loss queries per cluster (the median of |ℓ(e) − ℓ(c_i)| / ‖e − c_i‖²
   over the probed rows, a robust reading of the paper's Hölder constant);
3. draw ``s`` rows **with replacement**, p_e = ℓ̂(e) / Σ ℓ̂, and weigh each draw w = 1 / (s·p_e),
   so that Σ_draws w·ℓ is an unbiased estimate of Σ ℓ.

Budget: ``budget`` rows = the k center rows (the paper spends about 20% of its budget on them)
+ ``budget - k`` draws. The few probes that estimate Λ are extra loss queries, reported as cost.
The proxy that cannot blow up (issue 13). Every loss the method pays for feeds its cluster's
proxy level: ``level="shrunk"`` (the default) averages the center's and the probes' losses in
each cluster and shrinks that mean toward the corpus mean by an empirical-Bayes factor
τ² / (τ² + σ²_within / m) (τ² the spread of the true cluster means, σ²_within the pooled spread of
the queried losses around their cluster's mean, m the cluster's queried rows), so a noisy or
adversarial single loss moves its cluster little; ``"mean"`` is the unshrunk mean and
``"center"`` the literal Algorithm 1 (the center's loss alone). The draws then use the defensive
mixture p = a/n_d + (1 − a)·p_proxy over the n_d drawable rows (``mixture`` = a, as in
lightweight coresets): p >= a/n_d, so Σ ℓ²/p <= (n_d/a) Σ ℓ² (the second moment is at most 1/a
times uniform's), and the self-normalised estimate Σ w·ℓ / Σ w (what training with weights
normalised to mean 1 computes) has a first-order variance Σ (ℓ − μ)² / (n² p s) at most 1/a times
uniform's. (The plain unbiased estimate has no such bound relative to uniform's variance: with a
constant loss uniform's variance is 0 and any non-uniform p's is not.)

The center rows are part of the selected subset (``include_queried=True``, the default): they
enter the estimate exactly, with weight 1, and the draws are made over the other rows. The
estimate stays unbiased (given the centers, the draws estimate the rest of the sum), and every
row the budget paid for ends up in the subset, as the paper counts its "k + 1/ε²" selected
elements. ``include_queried=False`` is the literal Algorithm 1: draws over every row, the
centers only inform the proxy.

Every method returns a :class:`Sample`. The model is reached only through
``loss_fn(rows) -> losses``, wrapped in :class:`CountingLoss`, which counts the distinct rows
queried: the method's cost, as the paper counts it.

Sharding: the sampling needs only O(k) sums per shard. :func:`sensitivity_sampling_sharded`
runs the two passes (1: per-shard cluster counts, distance sums, nearest rows and probe
candidates; 2: each shard draws the share of the draws that falls into it); the functions it
chains (:func:`shard_stats`, :func:`merge_shard_stats`, :func:`shard_totals`,
:func:`split_draws`, :func:`draw_in_shard`) are what a distributed driver would call. For the
same seed, it draws the same rows as the one-machine :func:`sensitivity_sampling`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from libs.kmeans import check_embeddings

__all__ = ["Sample", "CountingLoss", "SensitivityResult", "ShardStats", "ClusterPlan", "LEVELS", "DEFAULT_MIXTURE",
           "proxy_losses", "cluster_levels", "mixture_floor", "estimate_lambda", "holder_ratios",
           "with_replacement_std", "without_replacement_std", "sensitivity_sample",
           "sensitivity_sampling", "sensitivity_sampling_sharded", "shard_stats", "merge_shard_stats",
           "shard_totals", "split_draws", "draw_in_shard", "uniform_sample", "stratified_sample", "kcenter_sample"]

LossFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# the common result type and the loss-query counter

@dataclasses.dataclass(frozen=True)
class Sample:
    """A weighted subset of ``n`` rows.

    Attributes
    ----------
    rows : int64 (s,)
        The drawn rows in draw order (repeats possible for samplers with replacement).
    weights : float64 (s,)
        Importance weight of each draw (1 / (s·p) for the samplers with replacement).
    probabilities : float64 (n,)
        The chance that one draw picks each row (sums to 1; 0 for ``fixed_rows``).
    fixed_rows : int64 (m,)
        Rows in the subset with certainty and weight 1 (those whose loss the method queried).
    design : str
        How ``rows`` were drawn, which fixes the estimate's exact variance (:meth:`exact_std`):
        "with_replacement" (independent draws with ``probabilities``), "without_replacement" (a
        simple random subset of the rows that are not fixed), "stratified" (a simple random subset
        within each stratum) or "deterministic" (no sampling variance defined: k-center).
    strata : int64 (n,)
        Each row's stratum for the "stratified" design (empty otherwise).
    """

    rows: np.ndarray
    weights: np.ndarray
    probabilities: np.ndarray
    fixed_rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    design: str = "with_replacement"
    strata: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n(self) -> int:
        return len(self.probabilities)

    @property
    def n_draws(self) -> int:
        return len(self.rows)

    @property
    def size(self) -> int:
        """Rows spent: draws (counting repeats) plus fixed rows."""
        return len(self.rows) + len(self.fixed_rows)

    def estimate(self, losses: np.ndarray) -> float:
        """The weighted estimate of ``losses.sum()``; ``losses`` is float (n,)."""
        losses = np.asarray(losses, dtype=np.float64)
        if losses.shape != (self.n,):
            raise ValueError(f"losses has shape {losses.shape}, expected ({self.n},) (one per row)")
        return float(losses[self.fixed_rows].sum() + np.dot(self.weights, losses[self.rows]))

    def estimate_mean(self, losses: np.ndarray) -> float:
        """The weighted estimate of ``losses.mean()``."""
        return self.estimate(losses) / self.n

    def exact_std(self, losses: np.ndarray) -> float:
        """The exact standard deviation of :meth:`estimate` (the total) over this design's draws.

        Computed from the design and the probabilities, not from repeated draws; NaN for the
        "deterministic" design.
        """
        losses = np.asarray(losses, dtype=np.float64)
        if losses.shape != (self.n,):
            raise ValueError(f"losses has shape {losses.shape}, expected ({self.n},) (one per row)")
        if self.design == "with_replacement":
            return with_replacement_std(losses, self.probabilities, self.n_draws, self.fixed_rows)
        drawable = np.ones(self.n, dtype=bool)
        drawable[self.fixed_rows] = False
        if self.design == "without_replacement":
            return without_replacement_std(losses[drawable], self.n_draws)
        if self.design == "stratified":
            strata = self.strata[drawable]
            k = int(self.strata.max()) + 1 if len(self.strata) else 0
            drawn = np.bincount(self.strata[self.rows], minlength=k)
            return float(np.sqrt(sum(without_replacement_std(losses[drawable][strata == c], int(drawn[c])) ** 2
                                     for c in range(k) if drawn[c])))
        return float("nan")

    def selected(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct selected rows (int64, sorted) and their summed weights (float64).

        A row drawn m times weighs the sum of its m draw weights; a fixed row weighs 1.
        These are the weights to train with, once, as per-example loss weights.
        """
        rows = np.concatenate([self.fixed_rows, self.rows]).astype(np.int64)
        weights = np.concatenate([np.ones(len(self.fixed_rows)), self.weights])
        unique, inverse = np.unique(rows, return_inverse=True)
        return unique, np.bincount(inverse, weights=weights, minlength=len(unique))


class CountingLoss:
    """Wraps ``loss_fn(rows) -> losses`` with a cache, and counts the distinct rows queried.

    Each row is sent to ``loss_fn`` at most once; :attr:`n_queries` is the method's cost.
    """

    def __init__(self, loss_fn: LossFn, n_rows: int | None = None):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(rows) -> losses, got {loss_fn!r}")
        self.loss_fn, self.n_rows, self._cache = loss_fn, n_rows, {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.n_rows is not None and len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise IndexError(f"loss query for rows outside [0, {self.n_rows})")
        new = np.array(sorted(set(rows.tolist()) - self._cache.keys()), dtype=np.int64)
        if len(new):
            values = np.asarray(self.loss_fn(new), dtype=np.float64).reshape(-1)
            if values.shape != new.shape:
                raise ValueError(f"loss_fn returned {values.shape[0]} losses for {len(new)} rows; "
                                 "it must return one loss per requested row")
            if not np.isfinite(values).all():
                raise ValueError(f"loss_fn returned NaN or infinite losses for rows "
                                 f"{new[~np.isfinite(values)][:5].tolist()}; check the reference model")
            self._cache.update(zip(new.tolist(), values.tolist()))
        return np.array([self._cache[r] for r in rows.tolist()], dtype=np.float64)

    @property
    def n_queries(self) -> int:
        return len(self._cache)

    @property
    def queried_rows(self) -> np.ndarray:
        return np.array(sorted(self._cache), dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# validation

def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_budget(n: int, budget, *, what: str = "budget") -> int:
    budget = _as_int(budget, what)
    if n == 0:
        raise ValueError("there are no rows to sample from")
    if budget < 1:
        raise ValueError(f"{what}={budget} must be >= 1")
    if budget > n:
        raise ValueError(f"{what}={budget} is larger than the data ({n} rows); lower the budget or add data")
    return budget


def _check_clustering(assignment: np.ndarray, sq_distance: np.ndarray, n_clusters: int | None,
                      *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    assignment = np.asarray(assignment)
    sq_distance = np.asarray(sq_distance, dtype=np.float64)
    if assignment.ndim != 1 or sq_distance.ndim != 1:
        raise ValueError(f"assignment and sq_distance must be 1-D, got shapes {assignment.shape} and "
                         f"{sq_distance.shape}")
    if len(assignment) != len(sq_distance):
        raise ValueError(f"assignment has {len(assignment)} rows but sq_distance has {len(sq_distance)}; "
                         "they must describe the same rows")
    if len(assignment) and not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"assignment must hold integer cluster ids, got dtype {assignment.dtype}")
    assignment = assignment.astype(np.int64, copy=False)
    if len(assignment) and assignment.min() < 0:
        raise ValueError(f"assignment holds a negative cluster id ({assignment.min()})")
    k = (int(assignment.max()) + 1 if len(assignment) else 0) if n_clusters is None else _as_int(n_clusters,
                                                                                              "n_clusters")
    if len(assignment) and assignment.max() >= k:
        raise ValueError(f"assignment holds cluster id {assignment.max()} but n_clusters={k}")
    if not np.isfinite(sq_distance).all() or (sq_distance < 0).any():
        raise ValueError("sq_distance must be finite and non-negative")
    if not allow_empty:
        sizes = np.bincount(assignment, minlength=k)
        empty = np.flatnonzero(sizes == 0)
        if len(empty):
            raise ValueError(f"{len(empty)} of {k} clusters are empty (first: cluster {empty[0]}); an empty cluster "
                             "has no center row to query: refit k-means with fewer clusters or drop the empty ones")
    return assignment, sq_distance, k


# ----------------------------------------------------------------------------------------------
# the proxy loss and Λ

def proxy_losses(center_loss: np.ndarray, assignment: np.ndarray, sq_distance: np.ndarray,
                 lam: float) -> np.ndarray:
    """ℓ̂(e) = ℓ(c_a(e)) + Λ‖e − c_a(e)‖² for every row.

    Parameters
    ----------
    center_loss : float (k,); assignment : int (n,); sq_distance : float (n,); lam : Λ >= 0

    Returns
    -------
    float64 (n,)
    """
    return _proxy(np.asarray(center_loss, dtype=np.float64), assignment, sq_distance, lam, False)


def _proxy(center_loss, assignment, sq_distance, lam, distance_only):
    if distance_only:
        return np.asarray(sq_distance, dtype=np.float64).copy()
    return center_loss[assignment] + lam * sq_distance


def estimate_lambda(probe_loss: np.ndarray, probe_center_loss: np.ndarray,
                    probe_sq_distance: np.ndarray) -> float:
    """Λ of the proxy loss from a few probed rows: the median of their Hölder ratios |ℓ(e) − ℓ(c)| / ‖e − c‖².

    The paper assumes the loss is (Λ, z)-Hölder around the centers (z = 2 for k-means); the
    median ratio over the probes is a robust estimate of that constant. Rows sitting on their
    center carry no information and are skipped; with no informative probe, Λ = 0 (the proxy
    is then the center's loss). (A variance-minimising choice of Λ from the same probes was
    tried on the default corpus and was worse: two or four probes per cluster are too few.)

    Parameters
    ----------
    probe_loss, probe_center_loss, probe_sq_distance : float (p,)
        Each probed row's loss, its center row's loss, and its squared distance to the center.
    """
    probe_loss, probe_center_loss, probe_sq_distance = (np.asarray(a, dtype=np.float64) for a in
                                                        (probe_loss, probe_center_loss, probe_sq_distance))
    if not len(probe_loss) == len(probe_center_loss) == len(probe_sq_distance):
        raise ValueError(f"probe arrays differ in length: {len(probe_loss)}, {len(probe_center_loss)}, "
                         f"{len(probe_sq_distance)}")
    informative = probe_sq_distance > 1e-12
    if not informative.any():
        return 0.0
    ratios = np.abs(probe_loss - probe_center_loss)[informative] / probe_sq_distance[informative]
    return float(np.median(ratios))


def holder_ratios(losses: np.ndarray, assignment: np.ndarray, sq_distance: np.ndarray,
                  center_indices: np.ndarray, *, z: float = 2.0) -> np.ndarray:
    """|ℓ(e) − ℓ(c_e)| / ‖e − c_e‖^z for every row that is not on its center (the paper's Table 1).

    Parameters
    ----------
    losses : float (n,) every row's true loss; assignment : int (n,); sq_distance : float (n,);
    center_indices : int (k,) the center row of each cluster; z : the Hölder exponent.

    Returns
    -------
    float64 (m,), one ratio per row with a non-zero distance to its center
    """
    losses = np.asarray(losses, dtype=np.float64)
    center_loss = losses[np.asarray(center_indices)]
    distance = np.sqrt(np.asarray(sq_distance, dtype=np.float64))
    keep = distance > 1e-6
    return np.abs(losses - center_loss[assignment])[keep] / distance[keep] ** z


def with_replacement_std(losses: np.ndarray, probabilities: np.ndarray, n_draws: int,
                         fixed_rows: np.ndarray = ()) -> float:
    """Exact standard deviation of the with-replacement estimate of ``losses.sum()``.

    Var = (Σ_{e∉F} ℓ_e² / p_e − (Σ_{e∉F} ℓ_e)²) / s, with F the fixed rows (known exactly).
    """
    losses = np.asarray(losses, dtype=np.float64)
    drawable = np.ones(len(losses), dtype=bool)
    drawable[np.asarray(fixed_rows, dtype=np.int64)] = False
    p, loss = np.asarray(probabilities)[drawable], losses[drawable]
    if ((p == 0) & (loss != 0)).any():
        return float("inf")
    positive = p > 0
    var = (np.sum(loss[positive] ** 2 / p[positive]) - loss.sum() ** 2) / n_draws
    return float(np.sqrt(max(var, 0.0)))


def without_replacement_std(losses: np.ndarray, n_draws: int) -> float:
    """Exact standard deviation of N·mean(ℓ over a simple random subset of ``n_draws`` of the N rows).

    Var = N² (1 − s/N) S² / s with S² the rows' variance (ddof 1): the estimate of ``losses.sum()``
    by uniform sampling without replacement.
    """
    losses = np.asarray(losses, dtype=np.float64)
    n, s = len(losses), int(n_draws)
    if not 1 <= s <= n:
        raise ValueError(f"n_draws={s} must lie in [1, {n}]")
    if n < 2 or s == n:
        return 0.0
    return float(np.sqrt(n * n * (1 - s / n) * losses.var(ddof=1) / s))


LEVELS = ("shrunk", "mean", "center")


def cluster_levels(center_loss: np.ndarray, probe_loss: np.ndarray, probe_clusters: np.ndarray, *,
                   level: str = "shrunk", cluster_sizes: np.ndarray | None = None) -> np.ndarray:
    """Each cluster's proxy level from every loss queried in it (its center and its probes).

    Parameters
    ----------
    center_loss : float (k,) the loss of each cluster's center row.
    probe_loss : float (p,); probe_clusters : int (p,) the probes' losses and clusters.
    level : "center" (the center's loss: literal Algorithm 1), "mean" (mean of the cluster's queried
        losses) or "shrunk" (that mean shrunk toward the corpus mean by the empirical-Bayes factor
        B_i = τ² / (τ² + σ²_w / m_i); see the module docstring).
    cluster_sizes : int (k,) rows per cluster; weighs the corpus mean (default: equal weights).

    Returns
    -------
    float64 (k,)
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not one of {LEVELS}")
    center_loss = np.asarray(center_loss, dtype=np.float64)
    if level == "center":
        return center_loss.copy()
    probe_loss = np.asarray(probe_loss, dtype=np.float64)
    probe_clusters = np.asarray(probe_clusters, dtype=np.int64)
    k = len(center_loss)
    counts = 1 + np.bincount(probe_clusters, minlength=k)
    sums = center_loss + np.bincount(probe_clusters, weights=probe_loss, minlength=k)
    means = sums / counts
    if level == "mean":
        return means
    squares = (center_loss - means) ** 2 + np.bincount(probe_clusters, weights=(probe_loss - means[probe_clusters]) ** 2,
                                                       minlength=k)
    dof = int((counts - 1).sum())
    within = float(squares.sum() / dof) if dof else 0.0                  # pooled σ²_w
    sizes = np.ones(k) if cluster_sizes is None else np.asarray(cluster_sizes, dtype=np.float64)
    grand = float(np.dot(sizes, means) / sizes.sum())
    noise = within / counts                                              # variance of each cluster's mean
    between = float(((means - means.mean()) ** 2).sum() / (k - 1)) if k > 1 else 0.0
    tau2 = max(between - float(noise.mean()), 0.0)                       # spread of the true cluster means
    denominator = tau2 + noise
    shrink = np.where(denominator > 0, tau2 / np.where(denominator > 0, denominator, 1.0), 1.0)
    return grand + shrink * (means - grand)


def mixture_floor(mean_score: float, floor: float, mixture: float) -> float:
    """φ added to every drawable row's proxy score so that p = a/n_d + (1 − a)·(ℓ̂ + floor·m̄)/Σ(ℓ̂ + floor·m̄).

    With m̄ the mean ℓ̂ over the drawable rows, φ = m̄·(floor + a(1 + floor)/(1 − a)): adding a
    constant to every score is exactly the mixture with uniform.
    """
    return mean_score * (floor + mixture * (1.0 + floor) / (1.0 - mixture))


# ----------------------------------------------------------------------------------------------
# the two passes over shards (one machine = one shard)

def _row_keys(rows: np.ndarray, random_state: int) -> np.ndarray:
    """A uniform [0, 1) key per global row, from a hash of (seed, row): the same whichever shard holds it."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(
            (int(random_state) * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) % 2 ** 64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclasses.dataclass(frozen=True)
class ShardStats:
    """What one shard sends to the driver after pass 1: O(k) numbers.

    Attributes
    ----------
    offset, n_rows : the shard's first global row and its row count.
    counts : int64 (k,) rows per cluster; sq_sums : float64 (k,) their summed squared distances.
    nearest_rows : int64 (k,) global row nearest each center here (-1: none); nearest_sq : float64 (k,).
    candidate_rows, candidate_keys, candidate_sq : (k, q) the q members of each cluster with the
        smallest hash keys (padded with -1 / inf): probe candidates, merged by the driver.
    """

    offset: int
    n_rows: int
    counts: np.ndarray
    sq_sums: np.ndarray
    nearest_rows: np.ndarray
    nearest_sq: np.ndarray
    candidate_rows: np.ndarray
    candidate_keys: np.ndarray
    candidate_sq: np.ndarray


def shard_stats(assignment: np.ndarray, sq_distance: np.ndarray, n_clusters: int, *, offset: int = 0,
                n_candidates: int = 0, random_state: int = 0) -> ShardStats:
    """Pass 1 on one shard: per-cluster counts, distance sums, nearest rows and probe candidates.

    Parameters
    ----------
    assignment : int (m,) the shard's rows' clusters; sq_distance : float (m,) their squared distances.
    n_clusters : k.
    offset : the shard's first global row.
    n_candidates : probe candidates kept per cluster (probes per cluster + 1, as one may be the center).
    random_state : seeds the probe keys (a hash of seed and global row).
    """
    from libs.kmeans import nearest_members

    assignment, sq_distance, k = _check_clustering(assignment, sq_distance, n_clusters, allow_empty=True)
    m = len(assignment)
    counts = np.bincount(assignment, minlength=k).astype(np.int64)
    sq_sums = np.bincount(assignment, weights=sq_distance, minlength=k)
    nearest_rows, nearest_sq = nearest_members(assignment, sq_distance, k, offset=offset)
    q = int(n_candidates)
    cand_rows = np.full((k, q), -1, dtype=np.int64)
    cand_keys = np.full((k, q), np.inf)
    cand_sq = np.full((k, q), np.inf)
    if q and m:
        keys = _row_keys(np.arange(offset, offset + m), random_state)
        order = np.lexsort((keys, assignment))                  # by cluster, then by key
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(m) - starts[assignment[order]]
        top = order[rank < q]
        slot = rank[rank < q]
        cand_rows[assignment[top], slot] = top + offset
        cand_keys[assignment[top], slot] = keys[top]
        cand_sq[assignment[top], slot] = sq_distance[top]
    return ShardStats(offset=int(offset), n_rows=m, counts=counts, sq_sums=sq_sums, nearest_rows=nearest_rows,
                      nearest_sq=nearest_sq, candidate_rows=cand_rows, candidate_keys=cand_keys,
                      candidate_sq=cand_sq)


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """The driver's merge of every shard's pass-1 stats.

    Attributes
    ----------
    sizes : int64 (k,); costs : float64 (k,) k-means cost per cluster.
    center_indices : int64 (k,) global row nearest each center; center_sq : float64 (k,) its squared distance.
    probe_rows : int64 (p,) rows probed for Λ (uniform within their cluster, never a center);
    probe_clusters : int64 (p,); probe_sq : float64 (p,).
    """

    sizes: np.ndarray
    costs: np.ndarray
    center_indices: np.ndarray
    center_sq: np.ndarray
    probe_rows: np.ndarray
    probe_clusters: np.ndarray
    probe_sq: np.ndarray


def merge_shard_stats(stats: Sequence[ShardStats], probes_per_cluster: int = 0) -> ClusterPlan:
    """Combine the shards' pass-1 stats; choose each cluster's center row and its probes.

    Raises
    ------
    ValueError
        When a cluster has no row in any shard (no center to query).
    """
    if not stats:
        raise ValueError("no shards: pass at least one ShardStats")
    k = len(stats[0].counts)
    if any(len(s.counts) != k for s in stats):
        raise ValueError("the shards disagree on the number of clusters; assign every shard to the same centers")
    sizes = np.sum([s.counts for s in stats], axis=0)
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        where = " in every shard" if len(stats) > 1 else ""
        raise ValueError(f"{len(empty)} of {k} clusters are empty{where} (first: cluster {empty[0]}); an empty "
                         "cluster has no center row to query: refit k-means with fewer clusters")
    costs = np.sum([s.sq_sums for s in stats], axis=0)
    near_sq = np.stack([s.nearest_sq for s in stats])                     # (shards, k)
    near_rows = np.stack([s.nearest_rows for s in stats])
    best_sq = near_sq.min(axis=0)
    # ties across shards: the lowest global row, as on one machine
    rows_at_best = np.where(near_sq == best_sq[None, :], near_rows, np.iinfo(np.int64).max)
    center_indices = rows_at_best.min(axis=0)
    probe_rows, probe_clusters, probe_sq = [], [], []
    if probes_per_cluster > 0:
        rows = np.concatenate([s.candidate_rows for s in stats], axis=1)    # (k, shards * q)
        keys = np.concatenate([s.candidate_keys for s in stats], axis=1)
        sq = np.concatenate([s.candidate_sq for s in stats], axis=1)
        keys = np.where(rows == center_indices[:, None], np.inf, keys)      # a center is never its own probe
        order = np.argsort(keys, axis=1, kind="stable")[:, :probes_per_cluster]
        take_rows = np.take_along_axis(rows, order, 1)
        take_keys = np.take_along_axis(keys, order, 1)
        take_sq = np.take_along_axis(sq, order, 1)
        valid = np.isfinite(take_keys)
        probe_rows = take_rows[valid]
        probe_clusters = np.broadcast_to(np.arange(k)[:, None], valid.shape)[valid]
        probe_sq = take_sq[valid]
    return ClusterPlan(sizes=sizes.astype(np.int64), costs=costs, center_indices=center_indices.astype(np.int64),
                       center_sq=best_sq, probe_rows=np.asarray(probe_rows, dtype=np.int64),
                       probe_clusters=np.asarray(probe_clusters, dtype=np.int64),
                       probe_sq=np.asarray(probe_sq, dtype=np.float64))


def _known_in_shard(known_rows, offset, n_rows):
    known_rows = np.asarray(known_rows, dtype=np.int64)
    inside = (known_rows >= offset) & (known_rows < offset + n_rows)
    return known_rows[inside] - offset


def shard_totals(stats: Sequence[ShardStats], center_loss: np.ndarray, lam: float, known_rows: np.ndarray,
                 known_clusters: np.ndarray, known_sq: np.ndarray, *, distance_only: bool = False,
                 floor: float = 1e-6, mixture: float = 0.0) -> tuple[np.ndarray, float]:
    """The driver's sums between the passes: Σ ℓ̂ over each shard's drawable rows, from O(k) stats.

    Every drawable row's score is ℓ̂(e) + φ, with φ from :func:`mixture_floor`: ``floor`` × the
    mean ℓ̂ over drawable rows (no row has probability 0) plus the defensive mixture with uniform
    (``mixture`` = a). ``center_loss`` is each cluster's proxy level. Known rows (queried, in the
    subset with weight 1) are not drawable.

    Returns
    -------
    totals : float64 (shards,) each shard's Σ score
    phi : float, the floor added to every drawable row's score
    """
    center_loss = np.asarray(center_loss, dtype=np.float64)
    known_rows, known_clusters, known_sq = (np.asarray(a) for a in (known_rows, known_clusters, known_sq))
    known_score = _proxy(center_loss, known_clusters.astype(np.int64), known_sq.astype(np.float64), lam,
                         distance_only)
    raw, drawable = [], []
    for s in stats:
        inside = (known_rows >= s.offset) & (known_rows < s.offset + s.n_rows)
        total = s.sq_sums.sum() if distance_only else float(s.counts @ center_loss + lam * s.sq_sums.sum())
        raw.append(max(total - known_score[inside].sum(), 0.0))
        drawable.append(s.n_rows - int(inside.sum()))
    raw, drawable = np.asarray(raw), np.asarray(drawable)
    if drawable.sum() == 0:
        raise ValueError("every row is known already: there is nothing left to draw from")
    phi = mixture_floor(max(raw.sum() / drawable.sum(), 1e-300), floor, mixture)
    return raw + phi * drawable, float(phi)


def split_draws(totals: np.ndarray, n_draws: int, *, random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw ``n_draws`` uniform positions on [0, Σ totals) and hand each shard those inside its span.

    Returns
    -------
    per shard: (draw positions int64 (m_j,) in the global draw order, local uniforms float64 (m_j,) in [0, 1))
    """
    totals = np.asarray(totals, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    u = rng.random(n_draws) * totals.sum()
    edges = np.concatenate([[0.0], np.cumsum(totals)])
    shard_of = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(totals) - 1)
    out = []
    for j in range(len(totals)):
        positions = np.flatnonzero(shard_of == j)
        local = np.clip((u[positions] - edges[j]) / max(totals[j], 1e-300), 0.0, np.nextafter(1.0, 0.0))
        out.append((positions, local))
    return out


def draw_in_shard(assignment: np.ndarray, sq_distance: np.ndarray, center_loss: np.ndarray, lam: float,
                  local_uniforms: np.ndarray, known_local_rows: np.ndarray, phi: float, *,
                  distance_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2 on one shard: inverse-CDF draws over its rows' scores.

    Parameters
    ----------
    assignment, sq_distance : the shard's rows (m,)
    local_uniforms : float (r,) in [0, 1), from :func:`split_draws`
    known_local_rows : int, shard-local rows that are not drawable
    phi : the floor from :func:`shard_totals`

    Returns
    -------
    local_rows : int64 (r,) drawn shard-local rows
    scores : float64 (m,) every row's score (0 for known rows): p = scores / Σ_all shards totals
    """
    scores = _proxy(np.asarray(center_loss, dtype=np.float64), assignment, sq_distance, lam, distance_only) + phi
    scores[np.asarray(known_local_rows, dtype=np.int64)] = 0.0
    cumulative = np.cumsum(scores)
    if not len(scores) or cumulative[-1] <= 0:
        return np.zeros(0, dtype=np.int64), scores
    rows = np.searchsorted(cumulative, np.asarray(local_uniforms) * cumulative[-1], side="right")
    last = int(np.flatnonzero(scores > 0)[-1])
    return np.minimum(rows, last).astype(np.int64), scores


# ----------------------------------------------------------------------------------------------
# Algorithm 1 end to end

@dataclasses.dataclass(frozen=True)
class SensitivityResult:
    """Algorithm 1's output and what it cost.

    Attributes
    ----------
    sample : Sample (fixed rows = the center rows when ``include_queried``)
    center_indices : int64 (k,); center_loss : float64 (k,) (NaN in the distance-only variant)
    probe_rows : int64 (p,); probe_loss : float64 (p,); probe_clusters : int64 (p,) the probed rows
    levels : float64 (k,) each cluster's proxy level (see :func:`cluster_levels`; NaN distance-only)
    lambda_ : float Λ used (inf for the distance-only variant)
    mixture : float a of the defensive mixture p = a/n_d + (1 − a)·p_proxy
    n_loss_queries : int distinct rows whose loss was queried to select (centers + probes)
    cluster_sizes : int64 (k,); cluster_costs : float64 (k,)
    """

    sample: Sample
    center_indices: np.ndarray
    center_loss: np.ndarray
    probe_rows: np.ndarray
    probe_loss: np.ndarray
    lambda_: float
    n_loss_queries: int
    cluster_sizes: np.ndarray
    cluster_costs: np.ndarray
    probe_clusters: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    levels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    mixture: float = 0.0


DEFAULT_MIXTURE = 0.3


def sensitivity_sampling(assignment: np.ndarray, sq_distance: np.ndarray, loss_fn: LossFn, budget: int, *,
                         n_clusters: int | None = None, lambda_: float | None = None, probes_per_cluster: int = 2,
                         include_queried: bool = True, distance_only: bool = False, floor: float = 1e-6,
                         level: str = "shrunk", mixture: float = DEFAULT_MIXTURE,
                         random_state: int = 0) -> SensitivityResult:
    """Algorithm 1 on one machine, with the robust proxy: centers' and probes' losses, Λ, ``budget - k`` draws.

    Parameters
    ----------
    assignment : int (n,) cluster of each row; sq_distance : float (n,) squared distance to its center.
    loss_fn : ``loss_fn(rows int64 (m,)) -> float (m,)``, the reference model's per-row loss (>= 0).
    budget : rows in the subset, center rows included (k < budget <= n).
    n_clusters : k (default: ``assignment.max() + 1``); every cluster must have rows.
    lambda_ : Λ >= 0, or None to estimate it from the probes.
    probes_per_cluster : extra loss queries per cluster (rows drawn uniformly within each cluster,
        never its center; >= 1). They estimate Λ and, with the center, the cluster's level.
    include_queried : the center rows join the subset with weight 1 and are not drawn (default);
        False: the literal Algorithm 1, draws over every row (the centers still cost budget).
    distance_only : the Λ → ∞ limit, p ∝ ‖e − c‖²: sampling needs no loss query (the
        center rows still join the subset when ``include_queried``, else all ``budget`` rows are draws).
    floor : > 0; every drawable row's score gets ``floor`` × the mean score added (keeps p > 0).
    level : how each cluster's proxy level is formed, see :func:`cluster_levels`.
    mixture : a in [0, 1), the defensive mixture p = a/n_d + (1 − a)·p_proxy.
    random_state : seeds the probes and the draws.

    Returns
    -------
    SensitivityResult

    Raises
    ------
    ValueError
        On mismatched lengths, an empty cluster, a budget larger than the data or too small to
        leave a draw after the centers, a negative Λ, ``floor`` <= 0, ``probes_per_cluster`` < 1,
        ``mixture`` outside [0, 1), or non-finite / negative losses at the centers or the probes.
    """
    return sensitivity_sampling_sharded([(assignment, sq_distance)], loss_fn, budget, n_clusters=n_clusters,
                                        lambda_=lambda_, probes_per_cluster=probes_per_cluster,
                                        include_queried=include_queried, distance_only=distance_only, floor=floor,
                                        level=level, mixture=mixture, random_state=random_state)


def _check_losses(values: np.ndarray, rows: np.ndarray, what: str) -> None:
    if (values < 0).any():
        bad = np.flatnonzero(values < 0)[:5]
        raise ValueError(f"loss_fn returned negative losses at {what} rows {rows[bad].tolist()} (values "
                         f"{np.round(values[bad], 4).tolist()}); sensitivity sampling needs non-negative losses "
                         "(shift them by a constant, or use distance_only)")


def sensitivity_sampling_sharded(shards: Sequence[tuple[np.ndarray, np.ndarray]], loss_fn: LossFn, budget: int, *,
                                 n_clusters: int | None = None, lambda_: float | None = None,
                                 probes_per_cluster: int = 2, include_queried: bool = True,
                                 distance_only: bool = False, floor: float = 1e-6, level: str = "shrunk",
                                 mixture: float = DEFAULT_MIXTURE, random_state: int = 0) -> SensitivityResult:
    """Algorithm 1 over row shards in two passes; the same draws as :func:`sensitivity_sampling` for a seed.

    Parameters
    ----------
    shards : sequence of (assignment int (m_j,), sq_distance float (m_j,)), consecutive blocks of the
        global rows (shard j starts at row Σ_{i<j} m_i); a shard may be empty. In a distributed run
        each pair stays on its worker; only O(k) numbers per shard travel (see :class:`ShardStats`).
    loss_fn, budget, n_clusters, lambda_, probes_per_cluster, include_queried, distance_only, floor, level,
    mixture, random_state : as in :func:`sensitivity_sampling`.
    """
    if not shards:
        raise ValueError("no shards: pass at least one (assignment, sq_distance) pair")
    if n_clusters is None:
        ids = [np.asarray(a) for a, _ in shards]
        n_clusters = max((int(a.max()) + 1 for a in ids if a.size and np.issubdtype(a.dtype, np.integer)), default=0)
    k = _as_int(n_clusters, "n_clusters")
    checked = []
    for j, (a, d) in enumerate(shards):
        try:
            checked.append(_check_clustering(np.asarray(a, dtype=np.int64) if np.asarray(a).size == 0 else a, d, k,
                                             allow_empty=True)[:2])
        except ValueError as exc:
            raise ValueError(f"shard {j}: {exc}" if len(shards) > 1 else str(exc)) from exc
    n = sum(len(a) for a, _ in checked)
    budget = _check_budget(n, budget)
    if lambda_ is not None and not distance_only and (not np.isfinite(lambda_) or lambda_ < 0):
        raise ValueError(f"lambda_={lambda_} must be finite and >= 0 (or None to estimate it)")
    if not np.isfinite(floor) or floor <= 0:
        raise ValueError(f"floor={floor} must be > 0: a row whose proxy score is 0 would never be drawn and the "
                         "estimate would be biased (the default 1e-6 changes nothing else)")
    if not np.isfinite(mixture) or not 0.0 <= mixture < 1.0:
        raise ValueError(f"mixture={mixture} must lie in [0, 1) (the uniform share a of p = a/n + (1 - a) p_proxy; "
                         "for a = 1 use uniform sampling)")
    if level not in LEVELS:
        raise ValueError(f"level={level!r} is not one of {LEVELS}")
    n_probe = 0
    if not distance_only:
        n_probe = _as_int(probes_per_cluster, "probes_per_cluster")
        if n_probe < 1:
            raise ValueError(f"probes_per_cluster={probes_per_cluster} must be >= 1: the probes estimate Λ and, with "
                             "each center, its cluster's loss level (one center's loss alone is a fragile proxy); "
                             "use 1 or more, or distance_only=True")

    # pass 1: per-shard stats, merged by the driver
    offsets = np.concatenate([[0], np.cumsum([len(a) for a, _ in checked])[:-1]])
    stats = [shard_stats(a, d, k, offset=int(o), n_candidates=n_probe + 1 if n_probe else 0,
                         random_state=random_state) for (a, d), o in zip(checked, offsets)]
    plan = merge_shard_stats(stats, n_probe)

    # the driver's loss queries: centers, then probes (Λ and the cluster levels)
    counting = CountingLoss(loss_fn, n)
    if distance_only:
        center_loss = levels = np.full(k, np.nan)
        lam = float("inf")
        probe_rows, probe_loss = np.zeros(0, dtype=np.int64), np.zeros(0)
        probe_clusters = np.zeros(0, dtype=np.int64)
    else:
        center_loss = counting(plan.center_indices)
        _check_losses(center_loss, plan.center_indices, "center")
        probe_rows, probe_clusters = plan.probe_rows, plan.probe_clusters
        probe_loss = counting(probe_rows)
        _check_losses(probe_loss, probe_rows, "probe")
        lam = float(lambda_) if lambda_ is not None else estimate_lambda(
            probe_loss, center_loss[probe_clusters], plan.probe_sq)
        levels = cluster_levels(center_loss, probe_loss, probe_clusters, level=level, cluster_sizes=plan.sizes)
    # the budget: k center rows + the draws (the probes are extra queries, reported as cost)
    n_draws = budget - (k if (include_queried or not distance_only) else 0)
    if n_draws < 1:
        raise ValueError(f"budget={budget} leaves no draws after the {k} center rows; raise the budget or lower "
                         "n_clusters (center_fraction)")
    if include_queried:
        known_rows, known_clusters, known_sq = plan.center_indices, np.arange(k), plan.center_sq
    else:
        known_rows = known_clusters = np.zeros(0, dtype=np.int64)
        known_sq = np.zeros(0)
    score_level = np.zeros(k) if distance_only else levels

    # between the passes: per-shard sums; pass 2: each shard draws its share
    totals, phi = shard_totals(stats, score_level, 0.0 if distance_only else lam, known_rows, known_clusters,
                               known_sq, distance_only=distance_only, floor=floor, mixture=mixture)
    grand_total = float(totals.sum())
    rows = np.empty(n_draws, dtype=np.int64)
    scores_drawn = np.empty(n_draws)
    probabilities = np.empty(n)
    for (a, d), s, (positions, local_u) in zip(checked, stats,
                                               split_draws(totals, n_draws, random_state=random_state)):
        local_rows, scores = draw_in_shard(a, d, score_level, 0.0 if distance_only else lam, local_u,
                                           _known_in_shard(known_rows, s.offset, s.n_rows), phi,
                                           distance_only=distance_only)
        rows[positions] = local_rows + s.offset
        scores_drawn[positions] = scores[local_rows]
        probabilities[s.offset:s.offset + s.n_rows] = scores / grand_total
    p_drawn = scores_drawn / grand_total
    sample = Sample(rows=rows, weights=1.0 / (n_draws * p_drawn), probabilities=probabilities,
                    fixed_rows=np.sort(known_rows).astype(np.int64))
    return SensitivityResult(sample=sample, center_indices=plan.center_indices, center_loss=center_loss,
                             probe_rows=probe_rows, probe_loss=probe_loss, lambda_=lam,
                             n_loss_queries=counting.n_queries, cluster_sizes=plan.sizes, cluster_costs=plan.costs,
                             probe_clusters=probe_clusters, levels=levels, mixture=float(mixture))


def sensitivity_sample(assignment: np.ndarray, sq_distance: np.ndarray, center_loss: np.ndarray, lam: float,
                       n_draws: int, *, known_rows: np.ndarray = (), distance_only: bool = False,
                       floor: float = 1e-6, mixture: float = 0.0, random_state: int = 0) -> Sample:
    """The sampling step alone, with the center losses and Λ given: ``n_draws`` draws, p ∝ ℓ̂ (+ floor).

    Parameters
    ----------
    assignment : int (n,); sq_distance : float (n,); center_loss : float (k,); lam : Λ >= 0.
    n_draws : draws with replacement (1 <= n_draws <= n).
    mixture : a in [0, 1) of the defensive mixture with uniform.
    known_rows : rows not drawn, in the subset with weight 1 (their losses are known).
    distance_only : p ∝ ‖e − c‖² (the Λ → ∞ limit; ``lam`` and ``center_loss`` are ignored).
    """
    center_loss = np.asarray(center_loss, dtype=np.float64)
    assignment, sq_distance, k = _check_clustering(assignment, sq_distance, len(center_loss), allow_empty=True)
    n_draws = _check_budget(len(assignment), n_draws, what="n_draws")
    if not distance_only:
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam={lam} must be finite and >= 0; use distance_only=True for the Λ → ∞ limit")
        if not np.isfinite(center_loss).all() or (center_loss < 0).any():
            raise ValueError("center_loss must be finite and non-negative; check the reference model's losses")
    known_rows = np.unique(np.asarray(known_rows, dtype=np.int64))
    stats = [shard_stats(assignment, sq_distance, k)]
    cl = np.zeros(k) if distance_only else center_loss
    lam_used = 0.0 if distance_only else lam
    if not np.isfinite(floor) or floor <= 0 or not 0.0 <= mixture < 1.0:
        raise ValueError(f"floor={floor} must be > 0 and mixture={mixture} must lie in [0, 1)")
    totals, phi = shard_totals(stats, cl, lam_used, known_rows, assignment[known_rows], sq_distance[known_rows],
                               distance_only=distance_only, floor=floor, mixture=mixture)
    [(positions, local_u)] = split_draws(totals, n_draws, random_state=random_state)
    rows, scores = draw_in_shard(assignment, sq_distance, cl, lam_used, local_u, known_rows, phi,
                                 distance_only=distance_only)
    probabilities = scores / totals.sum()
    return Sample(rows=rows, weights=1.0 / (n_draws * probabilities[rows]), probabilities=probabilities,
                  fixed_rows=known_rows)


# ----------------------------------------------------------------------------------------------
# baselines

def uniform_sample(n: int, budget: int, *, replace: bool = False, random_state: int = 0) -> Sample:
    """Uniform sampling of ``budget`` rows out of ``n``: the uniform baseline.

    ``replace=False`` (the default, the baseline everywhere) is a simple random subset of
    ``budget`` distinct rows, weights n / budget, unbiased, variance N²(1 − s/N)S²/s;
    ``replace=True`` is the estimator of sensitivity sampling with equal probabilities (repeats
    possible, variance without the (1 − s/N) factor).
    """
    n = _as_int(n, "n")
    budget = _check_budget(n, budget)
    rng = np.random.default_rng(random_state)
    rows = rng.choice(n, size=budget, replace=replace).astype(np.int64)
    return Sample(rows=rows, weights=np.full(budget, n / budget), probabilities=np.full(n, 1.0 / n),
                  design="with_replacement" if replace else "without_replacement")


def stratified_sample(assignment: np.ndarray, budget: int, *, n_clusters: int | None = None,
                      random_state: int = 0) -> Sample:
    """Uniform within each cluster (without replacement), the budget split in proportion to cluster size.

    Every cluster gets at least one row (so ``budget`` must be >= the number of clusters); the
    rest is split by largest remainders. A row of cluster c drawn among m_c of its N_c rows
    weighs N_c / m_c, which makes the estimate unbiased.

    Parameters
    ----------
    assignment : int (n,); budget : 1 <= budget <= n; n_clusters : k (default: max id + 1).
    """
    assignment, _, k = _check_clustering(assignment, np.zeros(len(np.asarray(assignment))), n_clusters)
    n = len(assignment)
    budget = _check_budget(n, budget)
    if budget < k:
        raise ValueError(f"budget={budget} is smaller than the {k} clusters; stratified sampling needs one row "
                         "per cluster at least: raise the budget or lower n_clusters")
    rng = np.random.default_rng(random_state)
    sizes = np.bincount(assignment, minlength=k)
    quota = (budget - k) * sizes / n
    alloc = 1 + np.floor(quota).astype(np.int64)
    short = budget - int(alloc.sum())
    alloc[np.argsort(-(quota - np.floor(quota)), kind="stable")[:short]] += 1
    alloc = np.minimum(alloc, sizes)
    while alloc.sum() < budget:                     # clusters too small for their quota hand rows on
        room = np.flatnonzero(alloc < sizes)
        alloc[room[np.argmax((sizes - alloc)[room])]] += 1
    order = np.argsort(assignment, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rows, weights = [], []
    for c in range(k):
        members = order[starts[c]:starts[c] + sizes[c]]
        rows.append(rng.choice(members, size=alloc[c], replace=False))
        weights.append(np.full(alloc[c], sizes[c] / alloc[c]))
    probabilities = (alloc / (budget * sizes))[assignment]
    return Sample(rows=np.concatenate(rows).astype(np.int64), weights=np.concatenate(weights),
                  probabilities=probabilities, design="stratified", strata=assignment)


def kcenter_sample(x: np.ndarray, budget: int, *, random_state: int = 0) -> Sample:
    """k-center greedy (Sener & Savarese, ICLR 2018): from a random first row, repeatedly add the row
    farthest from everything chosen so far.

    Each chosen row weighs the number of rows it is the nearest chosen row to (a coreset
    weighting: not unbiased, the estimate is deterministic given the first row).

    Parameters
    ----------
    x : float (n, d) embeddings; budget : 1 <= budget <= n.
    """
    x = check_embeddings(x)
    n = len(x)
    budget = _check_budget(n, budget)
    rng = np.random.default_rng(random_state)
    sq_norms = np.einsum("ij,ij->i", x, x)

    def sq_dist_to(row: int) -> np.ndarray:
        return np.maximum(sq_norms - 2.0 * (x @ x[row]) + sq_norms[row], 0.0)

    chosen = np.empty(budget, dtype=np.int64)
    chosen[0] = rng.integers(n)
    nearest = sq_dist_to(chosen[0])                 # each row's squared distance to its nearest chosen row
    nearest[chosen[0]] = -1.0                       # chosen rows: never picked again, never re-owned
    owner = np.zeros(n, dtype=np.int64)
    for j in range(1, budget):
        chosen[j] = int(np.argmax(nearest))         # with duplicates left only, the lowest unchosen row
        d = sq_dist_to(chosen[j])
        closer = d < nearest
        owner[closer] = j
        nearest = np.where(closer, d, nearest)
        nearest[chosen[j]] = -1.0
    probabilities = np.zeros(n)
    probabilities[chosen] = 1.0 / budget
    return Sample(rows=chosen, weights=np.bincount(owner, minlength=budget).astype(np.float64),
                  probabilities=probabilities, design="deterministic")
