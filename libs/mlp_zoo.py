"""A zoo of small MLPs trained on spiral tasks, many networks of one shape at a time.

The zoo design (Yak, Gonzalvo & Mazzawi 2019, scaled down): tasks are sampled from a grid of
spiral variations (``libs.spiral``); for every task and every architecture (hidden depth x
width) a few optimisation settings are sampled (optimizer, learning-rate level, batch size,
weight decay, dropout). Networks of one architecture and number of classes train together as
one batched model, across the tasks of a shard: weights ``(G, d_in, d_out)`` and
``torch.baddbmm`` over per-network batches ``(G, B, 2)``, a hand-written optimizer (SGD with
heavy-ball momentum 0.9, or Adam; weight decay as an L2 term in the gradient) whose learning
rate, weight decay, optimizer kind, batch size and dropout rate are per-network tensors. Batch
size is per network by masking: every step draws for each network a random subset (without
replacement) of its own training set, of the largest batch size, and a network with batch size
b uses its first b examples.

Each trained network yields one row: its gap features (``libs.spiral_features.mlp_gap_features``,
training data only), its measured gap (test error - train error, and test loss - train
loss), its task and its hyperparameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from libs.spiral_features import knn_loo_error, median_nn_distance, mlp_gap_features, smoothed_probes
from libs.spiral import SpiralData, SpiralTask

__all__ = ["NetworkSpec", "sample_tasks", "sample_networks", "train_networks", "learning_rate"]

OPTIMIZERS = ("sgd", "adam")
BASE_LR = {"sgd": 0.01, "adam": 0.003}     # the middle learning-rate level of each optimizer


def learning_rate(optimizer: str, level: int, n_levels: int) -> float:
    """The learning rate of ``level`` in 0 .. n_levels-1: half-decades around the optimizer's base rate."""
    if optimizer not in BASE_LR:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {OPTIMIZERS}")
    return BASE_LR[optimizer] * 10 ** ((level - (n_levels - 1) / 2) / 2)


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """One network of the zoo: its task, architecture and optimisation settings."""

    network_id: int
    task_index: int
    depth: int            # hidden layers
    width: int            # units per hidden layer
    optimizer: str        # sgd (momentum 0.9) or adam
    lr_level: int         # index into the learning-rate grid (0 = smallest)
    lr: float
    batch_size: int
    weight_decay: float   # L2 penalty coefficient added to the gradient
    dropout: float        # dropout rate on hidden activations while training

    def hparams(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("network_id", "task_index")}


def sample_tasks(n_tasks: int, *, arms: tuple, turns: tuple, noises: tuple, n_trains: tuple, label_noises: tuple,
                 n_test: int, seed: int) -> list[SpiralTask]:
    """``n_tasks`` spiral tasks from the grid; arms cycle so every arm count is represented."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks={n_tasks} must be >= 1")
    rng = np.random.default_rng([seed, 11])
    pick = lambda values: values[int(rng.integers(len(values)))]  # noqa: E731
    return [SpiralTask(arms=int(arms[i % len(arms)]), turns=float(pick(turns)), noise=float(pick(noises)),
                       n_train=int(pick(n_trains)), label_noise=float(pick(label_noises)), n_test=int(n_test))
            for i in range(n_tasks)]


def sample_networks(task_index: int, *, depths: tuple, widths: tuple, n_per_architecture: int, optimizers: tuple,
                    n_lr_levels: int, batch_sizes: tuple, weight_decays: tuple, dropouts: tuple, seed: int,
                    first_id: int = 0) -> list[NetworkSpec]:
    """Networks of one task: every (depth, width), each with ``n_per_architecture`` sampled settings."""
    rng = np.random.default_rng([seed, 13, task_index])
    specs = []
    for depth in depths:
        for width in widths:
            for _ in range(n_per_architecture):
                opt = optimizers[int(rng.integers(len(optimizers)))]
                level = int(rng.integers(n_lr_levels))
                specs.append(NetworkSpec(
                    network_id=first_id + len(specs), task_index=task_index, depth=int(depth), width=int(width),
                    optimizer=opt, lr_level=level, lr=learning_rate(opt, level, n_lr_levels),
                    batch_size=int(batch_sizes[int(rng.integers(len(batch_sizes)))]),
                    weight_decay=float(weight_decays[int(rng.integers(len(weight_decays)))]),
                    dropout=float(dropouts[int(rng.integers(len(dropouts)))])))
    return specs


def _init(dims: list[int], g: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """He-uniform weights (G, d_in, d_out) and zero biases (G, 1, d_out) for every layer."""
    weights, biases = [], []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        bound = math.sqrt(6.0 / d_in)
        weights.append((torch.rand(g, d_in, d_out, generator=gen) * 2 - 1) * bound)
        biases.append(torch.zeros(g, 1, d_out))
    return weights, biases


def _forward_train(weights, biases, x, keep_prob, gen):
    """Logits (G, B, C) of inputs x (G, B, d) with per-network dropout on the hidden activations (keep_prob (G, 1, 1))."""
    h = x
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b, h, w)
        if layer < len(weights) - 1:
            h = torch.relu(h)
            mask = torch.rand(h.shape, generator=gen) < keep_prob
            h = h * mask / keep_prob
    return h


def _evaluate(weights, biases, x, y):
    """Per-network mean cross-entropy and error rate on (x, y) shared by the networks: two (G,) float64 tensors."""
    with torch.no_grad():
        h = x.expand(weights[0].shape[0], *x.shape)
        for layer, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b, h, w)
            if layer < len(weights) - 1:
                h = torch.relu(h)
        g = h.shape[0]
        loss = F.cross_entropy(h.reshape(-1, h.shape[2]), y.repeat(g), reduction="none").view(g, -1).mean(1)
        error = (h.argmax(2) != y).float().mean(1)
    return loss.double(), error.double()


def _train_group(datasets: list[SpiralData], specs: list[NetworkSpec], steps: int, seed: int):
    """Train G networks of one shape, network k on ``datasets[k]``; returns (weights, biases, init_weights).

    Every step draws, for every network, a fresh batch of its batch size without replacement from
    its own training set (the whole set when the batch size is at least its size), so networks on
    tasks of different sizes train side by side.
    """
    g = len(specs)
    if len(datasets) != g:
        raise ValueError(f"_train_group: {len(datasets)} datasets for {g} networks")
    depth, width, arms = specs[0].depth, specs[0].width, datasets[0].task.arms
    if any((s.depth, s.width, d.task.arms) != (depth, width, arms) for s, d in zip(specs, datasets)):
        raise ValueError("_train_group: every network of a group needs the same depth, width and number of classes")
    gen = torch.Generator().manual_seed(seed)
    weights, biases = _init([2] + [width] * depth + [arms], g, gen)
    init_weights = [w.clone() for w in weights]
    params = weights + biases
    for p in params:
        p.requires_grad_(True)
    column = lambda values: torch.tensor(values, dtype=torch.float32).view(g, 1, 1)  # noqa: E731
    lr = column([s.lr for s in specs])
    wd = column([s.weight_decay for s in specs])
    is_adam = column([s.optimizer == "adam" for s in specs]).bool()
    keep_prob = column([1.0 - s.dropout for s in specs])
    n = torch.tensor([len(d.y_train) for d in datasets])                                      # (G,)
    n_max = int(n.max())
    x_all = torch.zeros(g, n_max, 2)                                                            # (G, N, 2) padded
    y_all = torch.zeros(g, n_max, dtype=torch.long)
    for k, d in enumerate(datasets):
        x_all[k, :len(d.y_train)] = torch.as_tensor(d.x_train)
        y_all[k, :len(d.y_train)] = torch.as_tensor(d.y_train)
    sizes = torch.minimum(torch.tensor([s.batch_size for s in specs]), n)                      # (G,)
    b_max = int(sizes.max())
    batch_weight = (torch.arange(b_max)[None, :] < sizes[:, None]).float() / sizes[:, None]   # (G, B)
    padded = torch.arange(n_max)[None, :] >= n[:, None]                                        # (G, N)
    rows = torch.arange(g)[:, None]
    moment1 = [torch.zeros_like(p) for p in params]
    moment2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps, momentum = 0.9, 0.999, 1e-8, 0.9
    for step in range(1, steps + 1):
        keys = torch.rand(g, n_max, generator=gen).masked_fill_(padded, 2.0)                  # padding sorts last
        idx = keys.argsort(dim=1)[:, :b_max]                                                    # (G, B)
        logits = _forward_train(weights, biases, x_all[rows, idx], keep_prob, gen)            # (G, B, C)
        ce = F.cross_entropy(logits.reshape(-1, arms), y_all[rows, idx].reshape(-1), reduction="none").view(g, -1)
        grads = torch.autograd.grad((ce * batch_weight).sum(), params)   # each network's own mean loss
        with torch.no_grad():
            for p, grad, m1, m2 in zip(params, grads, moment1, moment2):
                shape = (g, *([1] * (p.ndim - 1)))
                grad = grad + wd.view(shape) * p
                # sgd: heavy-ball momentum buffer in m1 (m2 unused); adam: bias-corrected moments
                sel = is_adam.view(shape)
                m1.copy_(torch.where(sel, beta1 * m1 + (1 - beta1) * grad, momentum * m1 + grad))
                m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                adam_step = (m1 / (1 - beta1 ** step)) / ((m2 / (1 - beta2 ** step)).sqrt() + eps)
                p.sub_(lr.view(shape) * torch.where(sel, adam_step, m1))
    return [w.detach() for w in weights], [b.detach() for b in biases], init_weights


def _group_seed(seed: int, key: tuple) -> int:
    return int(np.random.SeedSequence([seed, 17, *key]).generate_state(1)[0])


def train_networks(datasets: Mapping[int, SpiralData], specs: list[NetworkSpec], *, steps: int,
                   seed: int) -> tuple[list[dict], int, int]:
    """Train ``specs`` (network k on ``datasets[k.task_index]``) and measure them: (rows, n_diverged, n_collapsed).

    Networks of one depth, width and number of classes train together as one batched model,
    across tasks (so the grouping, and with it each network's random stream, depends on which
    tasks are trained together: the shard). A network whose weights or losses are not finite after
    training diverged; one whose logits no longer depend on its input (every ReLU dead: geometric
    complexity 0, margins undefined) collapsed. Neither gets a row (their counts are returned).

    Each row: ``network_id``, ``task_index``, ``family``, ``task`` (the task's knobs), ``hparams``,
    ``features`` (dict: the network's gap features and the task's ``train_knn_error`` and
    ``log_nn_distance``, both from its training set),
    ``layer_signatures`` (list of 5-lists: input, hidden layers, logits), ``gap`` (test error -
    train error), ``loss_gap`` (test loss - train loss), ``train_error``, ``test_error``,
    ``train_loss``, ``test_loss``.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    missing = sorted({s.task_index for s in specs} - set(datasets))
    if missing:
        raise ValueError(f"train_networks: no dataset for task(s) {missing}")
    groups: dict[tuple, list[NetworkSpec]] = defaultdict(list)
    for spec in specs:
        groups[(spec.depth, spec.width, datasets[spec.task_index].task.arms)].append(spec)
    data_features = {i: {"train_knn_error": knn_loo_error(d.x_train, d.y_train, k=5),
                         "log_nn_distance": math.log(max(median_nn_distance(d.x_train), 1e-12))}
                     for i, d in datasets.items() if any(s.task_index == i for s in specs)}
    probes = {i: smoothed_probes(datasets[i].x_train, datasets[i].y_train, datasets[i].task.arms, seed=seed)
              for i in data_features}                                  # shared by every network of the task
    rows, n_diverged, n_collapsed = [], 0, 0
    for key in sorted(groups):
        members = groups[key]
        tasks_key = tuple(sorted({s.task_index for s in members}))
        weights, biases, init_weights = _train_group([datasets[s.task_index] for s in members], members, steps,
                                                     _group_seed(seed, key + tasks_key))
        for task_index in tasks_key:                                           # measure task by task
            local = [k for k, s in enumerate(members) if s.task_index == task_index]
            part = lambda ts: [t[local] for t in ts]  # noqa: E731
            task_rows, diverged, collapsed = _measure(datasets[task_index], [members[k] for k in local],
                                                      part(weights), part(biases), part(init_weights),
                                                      probes[task_index])
            for row in task_rows:
                row["features"] |= data_features[task_index]
            rows += task_rows
            n_diverged += diverged
            n_collapsed += collapsed
    rows.sort(key=lambda r: r["network_id"])
    return rows, n_diverged, n_collapsed


def _measure(data: SpiralData, specs: list[NetworkSpec], weights, biases, init_weights,
             probes) -> tuple[list[dict], int, int]:
    """Rows of trained networks of one task (features from its training data, errors on both sets)."""
    x_train, y_train = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    x_test, y_test = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)
    train_loss, train_error = _evaluate(weights, biases, x_train, y_train)
    test_loss, test_error = _evaluate(weights, biases, x_test, y_test)
    finite = torch.stack([torch.isfinite(w).all((1, 2)) for w in weights + biases]).all(0)
    finite &= torch.isfinite(train_loss) & torch.isfinite(test_loss)
    keep = torch.nonzero(finite)[:, 0]
    n_diverged, n_collapsed = int((~finite).sum()), 0
    if len(keep) == 0:
        return [], n_diverged, 0
    sub = lambda ts: [t[keep].double() for t in ts]  # noqa: E731
    features, sequences = mlp_gap_features(sub(weights), sub(biases), sub(init_weights), x_train.double(), y_train,
                                           probes=probes)
    task = dataclasses.asdict(data.task)
    rows = []
    for j, k in enumerate(keep.tolist()):
        if not all(math.isfinite(v) for v in features[j].values()):
            n_collapsed += 1
            continue
        spec = specs[k]
        rows.append({"network_id": spec.network_id, "task_index": spec.task_index, "family": data.task.family,
                     "task": task, "hparams": spec.hparams(), "features": features[j],
                     "layer_signatures": sequences[j].tolist(),
                     "gap": float(test_error[k] - train_error[k]), "loss_gap": float(test_loss[k] - train_loss[k]),
                     "train_error": float(train_error[k]), "test_error": float(test_error[k]),
                     "train_loss": float(train_loss[k]), "test_loss": float(test_loss[k])})
    return rows, n_diverged, n_collapsed
