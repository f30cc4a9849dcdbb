"""The train_shard stage of GapZooFlow: train and measure the networks of a few spiral tasks.

``run`` trains every network of the tasks it is given (``libs.mlp_zoo``: networks of one shape
train batched across the tasks) and returns one row per network: its gap features from training
data only (``libs.spiral_features``), the measured gap (test error - train error; test loss -
train loss beside it), its task and its hyperparameters. Rows are plain data (numbers, strings,
lists, dicts). ``shard_plan`` cuts the zoo's tasks into the flow's foreach shards.
"""

from __future__ import annotations

import dataclasses
import time

from libs.report import Figure, Markdown
from libs.schema import option

__all__ = ["ZooConfig", "ShardResult", "shard_plan", "run", "report"]


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """The zoo: spiral tasks, the networks trained on each, and how they are sharded."""

    n_tasks: int = option(72, "spiral tasks in the zoo (networks = n_tasks x depths x widths x "
                              "networks_per_architecture)", min=1)
    tasks_per_shard: int = option(12, "tasks trained by one foreach branch (shards = ceil(n_tasks / this)); "
                                      "networks of one shape train batched across a shard's tasks", min=1)
    arms: tuple[int, ...] = option(doc="spiral arms (classes) grid; tasks cycle through it", min=2,
                                   default_factory=lambda: (2, 3, 4))
    turns: tuple[float, ...] = option(doc="turns per arm grid", min=0.1, default_factory=lambda: (0.75, 1.25, 1.75))
    noises: tuple[float, ...] = option(doc="input-noise std grid", min=0.0, default_factory=lambda: (0.02, 0.1, 0.2))
    n_trains: tuple[int, ...] = option(doc="training-set size grid", min=10, default_factory=lambda: (100, 200, 400))
    label_noises: tuple[float, ...] = option(doc="label-noise probability grid", min=0.0, max=0.9,
                                             default_factory=lambda: (0.0, 0.1, 0.2))
    n_test: int = option(5000, "test points per task (same distribution; the measured gap's precision)", min=10)
    depths: tuple[int, ...] = option(doc="hidden-layer counts", min=1, default_factory=lambda: (1, 2, 3, 4))
    widths: tuple[int, ...] = option(doc="hidden widths", min=1, default_factory=lambda: (16, 32, 64))
    networks_per_architecture: int = option(2, "sampled optimisation settings per task and (depth, width)", min=1)
    optimizers: tuple[str, ...] = option(doc="optimizers sampled from", choices=("sgd", "adam"),
                                         default_factory=lambda: ("sgd", "adam"))
    n_lr_levels: int = option(5, "learning-rate levels: half-decades around sgd 0.01 / adam 0.003", min=1)
    batch_sizes: tuple[int, ...] = option(doc="batch-size grid", min=1, default_factory=lambda: (16, 32, 64))
    weight_decays: tuple[float, ...] = option(doc="L2 weight-decay grid", min=0.0,
                                              default_factory=lambda: (0.0, 1e-4, 1e-3))
    dropouts: tuple[float, ...] = option(doc="dropout-rate grid (hidden layers)", min=0.0, max=0.9,
                                         default_factory=lambda: (0.0, 0.1, 0.3))
    steps: int = option(3000, "optimizer steps per network", min=1)
    threads: int = option(0, "torch CPU threads per shard (0: the flow splits the cores over parallel shards)",
                          min=0)

    def __post_init__(self):
        for name in ("arms", "turns", "noises", "n_trains", "label_noises", "depths", "widths", "optimizers",
                     "batch_sizes", "weight_decays", "dropouts"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"zoo.{name} is empty; give at least one value")

    @property
    def n_networks(self) -> int:
        return self.n_tasks * len(self.depths) * len(self.widths) * self.networks_per_architecture


def shard_plan(cfg: ZooConfig) -> list[list[int]]:
    """Task indices of every shard: consecutive blocks of ``tasks_per_shard`` tasks."""
    return [list(range(i, min(i + cfg.tasks_per_shard, cfg.n_tasks))) for i in range(0, cfg.n_tasks, cfg.tasks_per_shard)]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    rows: list[dict]
    n_networks: int       # trained (rows + diverged + collapsed)
    n_diverged: int       # non-finite weights or losses: no row
    n_collapsed: int      # logits independent of the input (all ReLUs dead): no row
    seconds: float


def run(cfg: ZooConfig, task_indices: list[int], *, seed: int) -> ShardResult:
    """Train and measure every network of the tasks ``task_indices`` (one shard of the zoo)."""
    import torch

    from libs.mlp_zoo import sample_networks, sample_tasks, train_networks
    from libs.spiral import make_spiral_data

    bad = [i for i in task_indices if not 0 <= i < cfg.n_tasks]
    if bad:
        raise ValueError(f"task indices {bad} are outside 0..zoo.n_tasks-1 = {cfg.n_tasks - 1}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    tasks = sample_tasks(cfg.n_tasks, arms=cfg.arms, turns=cfg.turns, noises=cfg.noises, n_trains=cfg.n_trains,
                         label_noises=cfg.label_noises, n_test=cfg.n_test, seed=seed)
    per_task = len(cfg.depths) * len(cfg.widths) * cfg.networks_per_architecture
    specs = [spec for i in task_indices
             for spec in sample_networks(i, depths=cfg.depths, widths=cfg.widths,
                                         n_per_architecture=cfg.networks_per_architecture, optimizers=cfg.optimizers,
                                         n_lr_levels=cfg.n_lr_levels, batch_sizes=cfg.batch_sizes,
                                         weight_decays=cfg.weight_decays, dropouts=cfg.dropouts, seed=seed,
                                         first_id=i * per_task)]
    datasets = {i: make_spiral_data(tasks[i], seed * 100_003 + i) for i in task_indices}
    rows, n_diverged, n_collapsed = train_networks(datasets, specs, steps=cfg.steps, seed=seed)
    return ShardResult(rows=rows, n_networks=len(specs), n_diverged=n_diverged, n_collapsed=n_collapsed,
                       seconds=time.perf_counter() - start)


def report(result: ShardResult, task_indices: list[int]) -> list:
    """A train_shard step's card: what the shard trained and the spread of its gaps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = [r["gap"] for r in result.rows]
    items = [Markdown(f"## Zoo shard: tasks {task_indices}\n\n{result.n_networks} networks trained in "
                      f"{result.seconds:.1f} s ({result.n_networks / max(result.seconds, 1e-9):.1f} networks/s); "
                      f"{result.n_diverged} diverged and {result.n_collapsed} collapsed to a constant function; "
                      "neither kind has a row.")]
    if gaps:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(gaps, bins=30)
        ax.set_xlabel("measured gap (test error - train error)")
        ax.set_ylabel("networks")
        ax.set_title("Gaps in this shard")
        fig.tight_layout()
        items.append(Figure(fig, title="Gap distribution"))
    return items
