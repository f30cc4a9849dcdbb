"""Generalization-gap predictors for the spiral zoo (GapZooFlow), its grouped splits and its metrics.

The language-model predictors of GrowthFlow are in :mod:`libs.gap_predictors` (its
``feature_matrix``, ``r2_score`` and ``kendall_tau`` serve both).
"""

from __future__ import annotations

import math
import pickle

import numpy as np

__all__ = ["ZOO_PREDICTORS", "SPLITS", "OUT_OF_DISTRIBUTION_SPLITS", "FEATURE_SETS", "feature_columns",
           "within_family_r2", "task_families", "load_predictors", "LayerSequenceRegressor", "QuantileClipper", "ZooPredictor",
           "make_spiral_regressor", "split_folds", "bootstrap_r2", "conditioned_ranking_information"]

# ---------------------------------------------------------------------------------------------
# The spiral zoo (GapZooFlow): a recurrent predictor over the per-layer signature sequence,
# grouped evaluation splits, and the metrics (R² with bootstrap intervals, Kendall τ, PGDL CMI).
# ---------------------------------------------------------------------------------------------

ZOO_PREDICTORS = ("linear", "mlp", "gbm", "rnn")
SPLITS = ("random", "task_family", "architecture", "hparam_extremes", "architecture_task_disjoint",
          "hparam_extremes_task_disjoint")
OUT_OF_DISTRIBUTION_SPLITS = ("architecture_task_disjoint", "hparam_extremes_task_disjoint")

# Feature sets of the ablation, by column name (see feature_columns): what carries the R².
FEATURE_SETS = ("jiang", "jiang_log", "jiang_gc_norms", "train_error_proxies", "all")
_SIGNATURE_PREFIXES = ("in_", "h1_", "hlast_", "hmean_", "out_")
_GC_NORMS = ("log_geometric_complexity", "log_weight_norm", "log_dist_from_init")
_PROXIES = ("train_loss", "train_error", "train_knn_error", "log_nn_distance")


def feature_columns(names: list[str], feature_set: str) -> list[int]:
    """Indices of the columns ``names`` that make up one ablation feature set.

    * ``jiang``: the margin signatures only (input, first and last hidden layer, mean over hidden
      layers, logits; signed log1p of the statistics of every defined margin).
    * ``jiang_log``: the same signatures in Jiang et al.'s variant (positive margins, log).
    * ``jiang_gc_norms``: ``jiang`` plus geometric complexity, weight norm and distance from init.
    * ``train_error_proxies``: training loss and error, the perturbed and smoothed-resample
      errors and the data's k-NN error and nearest-neighbour distance, without any margin.
    * ``all``: every column (signatures of both variants, norms, proxies, architecture covariates).
    """
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose from {FEATURE_SETS}")
    if feature_set == "all":
        return list(range(len(names)))

    def wanted(n: str) -> bool:
        signature = n.startswith(_SIGNATURE_PREFIXES)
        if feature_set == "jiang":
            return signature
        if feature_set == "jiang_log":
            return n.startswith("jiang_")
        if feature_set == "jiang_gc_norms":
            return signature or n in _GC_NORMS
        return n in _PROXIES or n.startswith(("perturbed_error_", "smoothed_error_"))

    cols = [i for i, n in enumerate(names) if wanted(n)]
    if not cols:
        raise ValueError(f"feature set {feature_set!r} matches none of the columns {names[:8]}...")
    return cols


class LayerSequenceRegressor:
    """Yak et al.'s RNN: a GRU reads the per-layer margin signatures (input layer first, logits last).

    Networks of any depth are sequences of their own length (depth + 2 steps of 5 statistics); the
    GRU's last state, concatenated with the standardized global features, feeds a small MLP head.
    Trained with Adam on the mean squared error, full determinism from ``random_state``.
    """

    def __init__(self, hidden_size: int = 32, epochs: int = 150, batch_size: int = 64, lr: float = 3e-3,
                 weight_decay: float = 1e-4, random_state: int = 0):
        self.hidden_size, self.epochs, self.batch_size = hidden_size, epochs, batch_size
        self.lr, self.weight_decay, self.random_state = lr, weight_decay, random_state

    def _tensors(self, x: np.ndarray, sequences: list) -> tuple:
        import torch

        lengths = torch.tensor([len(s) for s in sequences])
        steps = np.zeros((len(sequences), int(lengths.max()), self.step_mean_.shape[0]))
        for i, s in enumerate(sequences):
            steps[i, :len(s)] = (np.asarray(s) - self.step_mean_) / self.step_std_
        glob = (x - self.x_mean_) / self.x_std_
        return (torch.tensor(steps, dtype=torch.float32), lengths, torch.tensor(glob, dtype=torch.float32))

    def _predict_tensors(self, steps, lengths, glob):
        import torch

        out, _ = self.gru_(steps)                                            # (n, T, H)
        last = out[torch.arange(len(lengths)), lengths - 1]                  # (n, H): state after the last layer
        return self.head_(torch.cat([last, glob], dim=1))[:, 0]

    def fit(self, x: np.ndarray, sequences: list, y: np.ndarray) -> "LayerSequenceRegressor":
        import torch

        flat = np.concatenate([np.asarray(s) for s in sequences])
        self.step_mean_, self.step_std_ = flat.mean(0), flat.std(0) + 1e-8
        self.x_mean_, self.x_std_ = x.mean(0), x.std(0) + 1e-8
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std() + 1e-8)
        gen = torch.Generator().manual_seed(self.random_state)
        self.gru_ = torch.nn.GRU(flat.shape[1], self.hidden_size, batch_first=True)
        self.head_ = torch.nn.Sequential(torch.nn.Linear(self.hidden_size + x.shape[1], 64), torch.nn.ReLU(),
                                         torch.nn.Linear(64, 1))
        params = list(self.gru_.parameters()) + list(self.head_.parameters())
        with torch.no_grad():   # re-initialise from our own generator (no global RNG state)
            for p in params:
                bound = 1 / math.sqrt(p.shape[-1] if p.ndim > 1 else self.hidden_size)
                p.uniform_(-bound, bound, generator=gen)
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        steps, lengths, glob = self._tensors(x, sequences)
        target = torch.tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        n = len(target)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = (self._predict_tensors(steps[idx], lengths[idx], glob[idx]) - target[idx]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        return self

    def predict(self, x: np.ndarray, sequences: list) -> np.ndarray:
        import torch

        with torch.no_grad():
            pred = self._predict_tensors(*self._tensors(x, sequences)).double().numpy()
        return pred * self.y_std_ + self.y_mean_


class QuantileClipper:
    """Clip every feature to its [q, 1 - q] quantile range on the training rows (a scikit-learn transformer).

    Margin signatures have heavy tails (an example whose boundary is almost flat has a huge
    first-order distance); clipping to the training range keeps a few such rows from dominating
    a linear fit and keeps held-out rows (a deeper architecture, an extreme learning rate) from
    being extrapolated far outside what the predictor saw.
    """

    def __init__(self, quantile: float = 0.005):
        self.quantile = quantile

    def fit(self, x, y=None):
        x = np.asarray(x, dtype=np.float64)
        self.low_, self.high_ = np.quantile(x, self.quantile, axis=0), np.quantile(x, 1 - self.quantile, axis=0)
        return self

    def transform(self, x):
        return np.clip(np.asarray(x, dtype=np.float64), self.low_, self.high_)

    def fit_transform(self, x, y=None):
        return self.fit(x).transform(x)

    def get_params(self, deep=True):
        return {"quantile": self.quantile}

    def set_params(self, **params):
        for k, v in params.items():
            setattr(self, k, v)
        return self


class ZooPredictor:
    """One interface over every zoo predictor: ``fit(x, sequences, y)``, ``predict(x, sequences)``.

    ``linear`` (ridge on the standardized log-features: Jiang et al.), ``mlp`` (Yak's DNN) and
    ``gbm`` (gradient boosting) read the flat features ``x`` (n, f); ``rnn``
    (:class:`LayerSequenceRegressor`, Yak's RNN) reads the per-layer signature sequences and ``x``.
    Every predictor first clips its inputs to the training rows' range (:class:`QuantileClipper`).
    """

    def __init__(self, name: str, random_state: int = 0, rnn_epochs: int = 150):
        if name not in ZOO_PREDICTORS:
            raise ValueError(f"unknown zoo predictor {name!r}; choose from {ZOO_PREDICTORS}")
        self.name, self.random_state = name, random_state
        if name == "rnn":
            self.model = LayerSequenceRegressor(epochs=rnn_epochs, random_state=random_state)
        else:
            self.model = make_spiral_regressor(name, random_state)

    def fit(self, x: np.ndarray, sequences: list, y: np.ndarray) -> "ZooPredictor":
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(x) != len(y) or (self.name == "rnn" and len(sequences) != len(y)):
            raise ValueError(f"ZooPredictor.fit: {len(x)} feature rows, {len(y)} targets"
                             + (f", {len(sequences)} sequences" if self.name == "rnn" else ""))
        if len(y) < 4:
            raise ValueError(f"ZooPredictor.fit: {len(y)} rows; a predictor needs at least 4")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("ZooPredictor.fit: features and targets must be finite")
        self.clipper_ = QuantileClipper().fit(x)
        if self.name == "rnn":
            flat = np.concatenate([np.asarray(s) for s in sequences])
            self.step_clipper_ = QuantileClipper().fit(flat)
            self.model.fit(self.clipper_.transform(x), self._clip_sequences(sequences), y)
        else:
            self.model.fit(self.clipper_.transform(x), y)
        return self

    def _clip_sequences(self, sequences: list) -> list:
        return [self.step_clipper_.transform(np.asarray(s)) for s in sequences]

    def predict(self, x: np.ndarray, sequences: list) -> np.ndarray:
        x = self.clipper_.transform(x)
        if self.name == "rnn":
            return self.model.predict(x, self._clip_sequences(sequences))
        return self.model.predict(x)


def make_spiral_regressor(name: str, random_state: int):
    """The zoo's linear model, MLP (Yak's DNN) and gradient boosting, sized for ~1000 rows."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "linear":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 3, 15)))
    if name == "mlp":
        mlp = MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-3, learning_rate_init=1e-3, max_iter=2000,
                           early_stopping=True, validation_fraction=0.15, n_iter_no_change=40,
                           random_state=random_state)
        return make_pipeline(StandardScaler(), TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler()))
    return HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1e-3,
                                         random_state=random_state)


def task_families(meta: list[dict], family_keys: tuple[str, ...] | None = None) -> np.ndarray:
    """The task family of every row: the values of the task knobs ``family_keys``, else the row's ``family``."""
    if family_keys:
        return np.array(["_".join(f"{k}{m['task'][k]}" for k in family_keys) for m in meta])
    return np.array([str(m["family"]) for m in meta])


def split_folds(kind: str, meta: list[dict], *, n_folds: int = 5, random_state: int = 0,
                family_keys: tuple[str, ...] | None = None,
                n_family_folds: int = 3) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Train/test folds of the zoo for one evaluation split, and the group label of every row.

    ``meta`` holds one dict per row with ``network_id``, ``family`` (or ``task``, a dict of the
    task's knobs, when ``family_keys`` is given), ``hparams`` (``depth``, ``lr_level``). No group
    is ever on both sides of a fold:

    * ``random``: ``n_folds``-fold cross-validation over networks (group = the network).
    * ``task_family``: leave one task family out, every family in turn (group = the family,
      :func:`task_families`); the predictor never saw a network trained on that kind of task.
    * ``architecture``: one split, train on the shallower half of the depths, test on the deeper
      ones (group = depth; out of distribution in architecture, but the test tasks were seen).
    * ``hparam_extremes``: one split, train on the middle learning-rate levels, test on the
      smallest and largest (group = learning-rate level; the test tasks were seen).
    * ``architecture_task_disjoint`` and ``hparam_extremes_task_disjoint``: the same two shifts
      with the task families also disjoint. The families are dealt into ``n_family_folds`` folds
      (shuffled by ``random_state``); fold k trains on the shallow (middle-rate) networks of the
      other folds' families and tests on the deep (extreme-rate) networks of fold k's families.
      Every deep (extreme) network is tested once; group = the family (neither the family nor
      the depth or rate level is ever on both sides).

    Returns (folds, groups): folds are (train indices, test indices) pairs.
    """
    n = len(meta)
    families = task_families(meta, family_keys)
    if kind == "random":
        groups = np.array([str(m["network_id"]) for m in meta])
        order = np.random.default_rng(random_state).permutation(n)
        chunks = np.array_split(order, min(n_folds, n))
        folds = [(np.setdiff1d(np.arange(n), c), np.sort(c)) for c in chunks]
    elif kind == "task_family":
        groups = families
        folds = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in np.unique(groups)]
    elif kind in ("architecture", "hparam_extremes", "architecture_task_disjoint", "hparam_extremes_task_disjoint"):
        if kind.startswith("architecture"):
            depth = np.array([m["hparams"]["depth"] for m in meta])
            shift_groups = np.array([f"depth{d}" for d in depth])
            levels = np.unique(depth)
            shifted = depth > levels[(len(levels) - 1) // 2]           # depths <= the middle train, deeper test
        else:
            level = np.array([m["hparams"]["lr_level"] for m in meta])
            shift_groups = np.array([f"lr_level{v}" for v in level])
            shifted = (level == level.min()) | (level == level.max())
        if not kind.endswith("task_disjoint"):
            groups = shift_groups
            folds = [(np.flatnonzero(~shifted), np.flatnonzero(shifted))]
        else:
            groups = families
            unique = np.random.default_rng(random_state).permutation(np.unique(families))
            if len(unique) < 2:
                raise ValueError(f"split {kind!r} needs at least 2 task families, the zoo has {len(unique)}; "
                                 "grow the zoo's task grid or change fit.family_keys")
            folds = []
            for held in np.array_split(unique, min(n_family_folds, len(unique))):
                in_held = np.isin(families, held)
                folds.append((np.flatnonzero(~shifted & ~in_held), np.flatnonzero(shifted & in_held)))
            for train, test in folds:                                  # a guard: the shift is disjoint too
                if set(shift_groups[train]) & set(shift_groups[test]):
                    raise AssertionError(f"split {kind!r} leaks {sorted(set(shift_groups[train]) & set(shift_groups[test]))}")
    else:
        raise ValueError(f"unknown split {kind!r}; choose from {SPLITS}")
    for train, test in folds:
        if len(train) == 0 or len(test) == 0:
            raise ValueError(f"split {kind!r} has an empty side (the zoo has {len(np.unique(groups))} groups: "
                             f"{sorted(np.unique(groups))[:6]}); grow the zoo's grid along that axis")
        shared = set(groups[train]) & set(groups[test])
        if shared:   # a guard: the construction above never allows it
            raise AssertionError(f"split {kind!r} leaks groups {sorted(shared)[:5]}")
    return folds, groups


def within_family_r2(y: np.ndarray, pred: np.ndarray, families: np.ndarray) -> float:
    """R² against each task family's own mean gap: 1 - sum (y - pred)² / sum (y - mean of y in its family)².

    Above 0 only when the predictor beats an oracle that knows every family's mean gap, i.e. when it
    ranks and places networks within a family, not only the families against each other.
    """
    y, pred, families = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64), np.asarray(families)
    centred = y.copy()
    for f in np.unique(families):
        at = families == f
        centred[at] -= y[at].mean()
    ss_tot = float((centred ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def bootstrap_r2(y: np.ndarray, pred: np.ndarray, *, groups: np.ndarray | None = None, n_boot: int = 1000,
                 level: float = 0.95, random_state: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of R².

    With ``groups`` (the rows' task families) whole groups are resampled with replacement (a
    cluster bootstrap: networks of one family are not independent draws); without, rows are.
    """
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    if groups is None:
        members = [np.array([i]) for i in range(len(y))]
    else:
        groups = np.asarray(groups)
        members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    r2 = []
    for _ in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        yb, pb = y[idx], pred[idx]
        ss_tot = float(((yb - yb.mean()) ** 2).sum())
        if ss_tot > 0:
            r2.append(1.0 - float(((yb - pb) ** 2).sum()) / ss_tot)
    if not r2:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(r2, alpha)), float(np.quantile(r2, 1 - alpha))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def conditioned_ranking_information(y: np.ndarray, pred: np.ndarray, hparams: list[dict], names: tuple[str, ...], *,
                                   max_pairs_per_cell: int = 2000, random_state: int = 0) -> dict:
    """How much the predicted order of networks says about their true order once hyperparameters are fixed.

    Not PGDL's conditional mutual information: Jiang et al. (2020) and the PGDL competition compute
    it on a full factorial grid, where two networks of a cell differ in exactly the hyperparameters
    outside the conditioning set; our zoo samples its optimisation settings, so a cell's pairs
    differ in several at once. Hence the different name.

    What it computes. For every conditioning set S of one or two hyperparameters from ``names``:
    rows are grouped into cells that share the values of S; within each cell, pairs of networks
    (i, j) (all pairs, or ``max_pairs_per_cell`` sampled ones) give two binary variables,
    V_g = [gap_i > gap_j] and V_p = [pred_i > pred_j] (pairs with tied gaps are dropped). The score
    of S is I(V_p; V_g | U_S) / H(V_g | U_S), the mutual information (natural logs) pooled over
    cells weighted by their pair counts, normalized by the conditional entropy of V_g, so that 1
    means the predicted order always matches the true order (or always reverses it) and 0 means it
    carries no information once S is fixed. The reported score is the minimum over the conditioning
    sets, with the minimizing set. Only cells with at least 2 rows count.
    """
    from itertools import combinations

    rng = np.random.default_rng(random_state)
    sets = [(a,) for a in names] + list(combinations(names, 2))
    scores = {}
    for s in sets:
        cells: dict[tuple, list[int]] = {}
        for i, h in enumerate(hparams):
            cells.setdefault(tuple(h[k] for k in s), []).append(i)
        joint_all, total = [], 0
        for rows in cells.values():
            if len(rows) < 2:
                continue
            rows = np.array(rows)
            m = len(rows)
            n_all = m * (m - 1) // 2
            if n_all > max_pairs_per_cell:
                a = rng.integers(0, m, max_pairs_per_cell)
                b = rng.integers(0, m, max_pairs_per_cell)
                keep = a != b
                a, b = a[keep], b[keep]
            else:
                a, b = np.triu_indices(m, 1)
            ia, ib = rows[a], rows[b]
            untied = y[ia] != y[ib]
            vg = (y[ia] > y[ib])[untied].astype(int)
            vp = (pred[ia] > pred[ib])[untied].astype(int)
            if len(vg) == 0:
                continue
            joint = np.zeros((2, 2))
            np.add.at(joint, (vp, vg), 1)
            joint_all.append(joint)
            total += joint.sum()
        if total == 0:
            continue
        cmi = h_cond = 0.0
        for joint in joint_all:
            w = joint.sum() / total
            mi = _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint.ravel())
            cmi += w * mi
            h_cond += w * _entropy(joint.sum(0))
        scores["+".join(s)] = cmi / h_cond if h_cond > 0 else float("nan")
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        return {"score": float("nan"), "conditioned_on": None, "by_set": scores}
    worst = min(finite, key=finite.get)
    return {"score": finite[worst], "conditioned_on": worst, "by_set": scores}


class _RenamedModules(pickle.Unpickler):
    """Unpickles predictors pickled before the spiral split (classes then lived in libs.gap_predictors)."""

    def find_class(self, module, name):
        if module == "libs.gap_predictors" and name in ("ZooPredictor", "LayerSequenceRegressor", "QuantileClipper"):
            module = __name__
        return super().find_class(module, name)


def load_predictors(blob: bytes) -> dict:
    """The ``{name: ZooPredictor}`` dict of a GapZooFlow ``predictors`` artifact, old runs' included."""
    import io

    return _RenamedModules(io.BytesIO(blob)).load()
