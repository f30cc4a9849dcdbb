"""Sensitivity sampling (Axiotis et al., ICML 2024, Algorithm 1) and its baselines.

Every method returns a :class:`Sample`: the drawn rows (with replacement where the method
samples), their importance weights, and the sampling probabilities. For the unbiased
methods the weighted sum ``sum_j w_j * loss[rows_j]`` has expectation ``sum_i loss[i]``.

The model is reached only through ``loss_fn(indices) -> losses``; every row it is
asked about counts as one loss query (the method's cost, as the paper counts it).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

__all__ = ["Sample", "CountingLoss", "proxy_losses", "estimate_lambda", "sensitivity_sample",
           "uniform_sample", "stratified_sample", "kcenter_sample", "collapse"]


@dataclasses.dataclass(frozen=True)
class Sample:
    """rows (s,) int64 drawn rows (repeats possible); weights (s,) float64; probabilities (n,): the chance
    that one draw picks each point (summing to 1)."""

    rows: np.ndarray
    weights: np.ndarray
    probabilities: np.ndarray

    def estimate(self, losses: np.ndarray) -> float:
        """The weighted estimate of ``losses.sum()``."""
        return float(np.dot(self.weights, losses[self.rows]))


class CountingLoss:
    """Wraps a loss function and counts the distinct rows it was asked about."""

    def __init__(self, loss_fn: Callable[[np.ndarray], np.ndarray]):
        self.loss_fn, self.queried = loss_fn, set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.queried.update(rows.tolist())
        return np.asarray(self.loss_fn(rows), dtype=np.float64)

    @property
    def n_queries(self) -> int:
        return len(self.queried)


def _check(n: int, budget: int, *arrays: tuple[str, np.ndarray]) -> None:
    if n == 0:
        raise ValueError("no data to sample from")
    if not 1 <= budget <= n:
        raise ValueError(f"budget={budget} must lie in [1, {n}] (the number of training documents); "
                         "lower select.budget or add data")
    for name, a in arrays:
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows but there are {n} points; they must match")


def proxy_losses(center_loss: np.ndarray, assignment: np.ndarray, sq_distance: np.ndarray,
                 lam: float) -> np.ndarray:
    """ℓ̂(e) = ℓ(c_a(e)) + Λ ‖e − c_a(e)‖²  for every point; (n,) float64."""
    return center_loss[assignment] + lam * sq_distance


def estimate_lambda(center_loss: np.ndarray, assignment: np.ndarray, sq_distance: np.ndarray,
                    loss_fn: Callable[[np.ndarray], np.ndarray], *, per_cluster: int,
                    rng: np.random.Generator) -> float:
    """Λ from a few extra loss queries per cluster: the median of |ℓ(e) − ℓ(c)| / ‖e − c‖².

    The paper assumes ℓ is (Λ, 2)-Hölder around the centers; the median ratio over the
    probed points is a robust estimate of that constant.
    """
    probes = []
    for c in range(len(center_loss)):
        members = np.flatnonzero(assignment == c)
        members = members[sq_distance[members] > 1e-12]
        if len(members):
            probes.append(rng.choice(members, min(per_cluster, len(members)), replace=False))
    if not probes:
        return 0.0
    rows = np.concatenate(probes)
    ratios = np.abs(loss_fn(rows) - center_loss[assignment[rows]]) / sq_distance[rows]
    return float(np.median(ratios))


def _draw(probabilities: np.ndarray, s: int, rng: np.random.Generator) -> Sample:
    rows = rng.choice(len(probabilities), size=s, replace=True, p=probabilities)
    return Sample(rows=rows, weights=1.0 / (s * probabilities[rows]), probabilities=probabilities)


def sensitivity_sample(assignment: np.ndarray, sq_distance: np.ndarray, center_loss: np.ndarray, lam: float,
                       budget: int, *, distance_only: bool = False, random_state: int = 0) -> Sample:
    """Draw ``budget`` rows with replacement, p ∝ ℓ̂(e); weights 1 / (budget p).

    ``distance_only`` is the Λ → ∞ limit (p ∝ ‖e − c‖², the paper's regression setting).
    A small floor (1e-6 of the mean) keeps every point's probability positive, so the
    estimate stays unbiased even for points that sit on their center.
    """
    n = len(assignment)
    _check(n, budget, ("sq_distance", sq_distance))
    if distance_only:
        score = sq_distance.astype(np.float64)
    else:
        if lam < 0 or not np.isfinite(lam):
            raise ValueError(f"lambda must be finite and >= 0, got {lam}")
        score = proxy_losses(center_loss, assignment, sq_distance, lam)
    if not np.isfinite(score).all() or (score < 0).any():
        raise ValueError("proxy losses must be finite and non-negative; check the reference model's losses")
    score = score + 1e-6 * max(score.mean(), 1e-12)
    return _draw(score / score.sum(), budget, np.random.default_rng(random_state))


def uniform_sample(n: int, budget: int, *, random_state: int = 0) -> Sample:
    """Uniform with replacement: the same code as sensitivity sampling with equal probabilities."""
    _check(n, budget)
    return _draw(np.full(n, 1.0 / n), budget, np.random.default_rng(random_state))


def stratified_sample(assignment: np.ndarray, budget: int, *, random_state: int = 0) -> Sample:
    """Uniform within each cluster, the budget split in proportion to cluster size.

    (With fewer budget rows than clusters, the smallest clusters get none: then it is biased.)"""
    n = len(assignment)
    _check(n, budget)
    rng = np.random.default_rng(random_state)
    sizes = np.bincount(assignment)
    clusters = np.flatnonzero(sizes)
    quota = budget * sizes[clusters] / n
    alloc = np.floor(quota).astype(int)             # largest-remainder rounding to exactly `budget`
    alloc[np.argsort(-(quota - alloc), kind="stable")[:budget - alloc.sum()]] += 1
    rows, weights = [], []
    for c, m in zip(clusters, alloc):
        if m <= 0:
            continue
        members = np.flatnonzero(assignment == c)
        rows.append(rng.choice(members, m, replace=True))
        weights.append(np.full(m, len(members) / m))
    rows, weights = np.concatenate(rows), np.concatenate(weights)
    probabilities = (alloc / (budget * sizes[clusters]))[np.searchsorted(clusters, assignment)]
    return Sample(rows=rows, weights=weights, probabilities=probabilities)


def kcenter_sample(x: np.ndarray, budget: int, *, random_state: int = 0) -> Sample:
    """k-center greedy (Sener & Savarese 2018): farthest-point selection; each chosen point weighs
    the number of points it is nearest to (a coreset weighting, not an unbiased one)."""
    n = len(x)
    _check(n, budget)
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(random_state)
    chosen = [int(rng.integers(n))]
    dist = ((x - x[chosen[0]]) ** 2).sum(1)
    owner = np.zeros(n, dtype=np.int64)
    for j in range(1, budget):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        d = ((x - x[nxt]) ** 2).sum(1)
        closer = d < dist
        owner[closer], dist = j, np.where(closer, d, dist)
    weights = np.bincount(owner, minlength=budget).astype(np.float64)
    probabilities = np.zeros(n)
    probabilities[chosen] = 1.0 / budget            # deterministic given the first pick
    return Sample(rows=np.asarray(chosen, dtype=np.int64), weights=weights, probabilities=probabilities)


def collapse(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows and their summed weights (a row drawn twice weighs twice)."""
    rows, inverse = np.unique(sample.rows, return_inverse=True)
    return rows, np.bincount(inverse, weights=sample.weights)
