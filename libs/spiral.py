"""Spiral classification tasks (Yak, Gonzalvo & Mazzawi 2019 train their zoo on variations of these).

A task has ``arms`` classes, each an arm of a spiral in the plane: for a class ``k`` and a
position ``t ~ U(0, 1)`` along the arm, the point is ``t * (cos a, sin a)`` with angle
``a = 2 pi (turns * t + k / arms)``, plus isotropic Gaussian noise of standard deviation
``noise``. Label noise replaces a label, with probability ``label_noise``, by a uniformly drawn
*other* class. The test set is drawn from the same distribution (label noise included) with
an independent random stream, so test error - train error is an honest generalization gap.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SpiralTask", "SpiralData", "sample_spiral", "make_spiral_data"]


@dataclasses.dataclass(frozen=True)
class SpiralTask:
    """One spiral-dataset variation (the knobs of a task)."""

    arms: int = 3              # classes
    turns: float = 1.0         # full turns of each arm
    noise: float = 0.05        # std of the Gaussian noise added to every point
    n_train: int = 200         # training points
    label_noise: float = 0.0   # probability that a label is replaced by another class
    n_test: int = 1000         # test points (same distribution)

    def __post_init__(self):
        if self.arms < 2:
            raise ValueError(f"SpiralTask.arms={self.arms}: a classification task needs at least 2 arms")
        if self.turns <= 0:
            raise ValueError(f"SpiralTask.turns={self.turns}: must be > 0")
        if self.noise < 0:
            raise ValueError(f"SpiralTask.noise={self.noise}: must be >= 0")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"SpiralTask.label_noise={self.label_noise}: must be in [0, 1)")
        if self.n_train < self.arms or self.n_test < self.arms:
            raise ValueError(f"SpiralTask n_train={self.n_train}, n_test={self.n_test}: need at least one point "
                             f"per arm ({self.arms})")

    @property
    def family(self) -> str:
        """The task family used by the held-out-task split: the number of arms and the noise level."""
        return f"arms{self.arms}_noise{self.noise:g}"


@dataclasses.dataclass(frozen=True)
class SpiralData:
    """Training and test sets of one task: x float32 (n, 2), y int64 (n,)."""

    task: SpiralTask
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def sample_spiral(task: SpiralTask, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points of ``task`` (balanced classes, shuffled): x float32 (n, 2), y int64 (n,)."""
    if n < 1:
        raise ValueError(f"sample_spiral: n={n} must be >= 1")
    y = np.arange(n) % task.arms
    t = rng.uniform(0.0, 1.0, n)
    angle = 2 * np.pi * (task.turns * t + y / task.arms)
    x = t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + task.noise * rng.standard_normal((n, 2))
    if task.label_noise > 0:
        flip = rng.uniform(size=n) < task.label_noise
        shift = rng.integers(1, task.arms, n)                     # another class, uniformly
        y = np.where(flip, (y + shift) % task.arms, y)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order].astype(np.int64)


def make_spiral_data(task: SpiralTask, seed: int) -> SpiralData:
    """Training and test sets of ``task`` from independent streams of ``seed``."""
    x_train, y_train = sample_spiral(task, task.n_train, np.random.default_rng([seed, 0]))
    x_test, y_test = sample_spiral(task, task.n_test, np.random.default_rng([seed, 1]))
    return SpiralData(task, x_train, y_train, x_test, y_test)
