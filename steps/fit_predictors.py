"""The fit_predictors stage of GapZooFlow: score gap predictors on grouped splits of the zoo, ablate the features.

``run`` takes the zoo's rows (``steps.train_shard``) and, for every split and predictor
(``libs.spiral_predictors``), predicts every held-out network from a predictor fitted on the
others; it reports R² with a 95% bootstrap interval that resamples task families, Kendall tau,
R² within task families and the conditioned ranking information. The feature ablation refits the
cheaper predictors on nested feature sets (Jiang's margin signatures only, in both
transformations; + geometric complexity and norms; training error and resampling proxies only;
everything) so the reader sees what carries the R². A permutation check refits on shuffled
targets. Finally every predictor is fitted on the whole zoo. ``report`` and ``summary`` draw the
cards of the fit_predictors and end steps.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time

import numpy as np

from libs.gap_predictors import feature_matrix, kendall_tau, r2_score
from libs.report import Figure, Markdown, Table
from libs.schema import option
from libs.spiral_predictors import (FEATURE_SETS, OUT_OF_DISTRIBUTION_SPLITS, SPLITS, ZOO_PREDICTORS, ZooPredictor,
                                    bootstrap_r2, conditioned_ranking_information, feature_columns,
                                    make_spiral_regressor, split_folds, task_families, within_family_r2)

__all__ = ["FitConfig", "FitResult", "merge_shards", "zoo_inputs", "run", "out_of_distribution_summary", "report",
           "summary", "RANKING_HPARAMS", "YAK_ABSTRACT"]

RANKING_HPARAMS = ("depth", "width", "optimizer", "lr_level", "batch_size", "weight_decay", "dropout")
YAK_ABSTRACT = ("We extend Jiang et al. (2018) to also use DNNs and RNNs and show that they outperform the linear "
                "model, obtaining R^2=0.965. We also show results for architecture-independent, task-independent, "
                "and out-of-distribution generalization gap prediction tasks. Both DNNs and RNNs consistently and "
                "significantly outperform linear models, with RNNs obtaining R^2=0.584.")
YAK_NOTE = ("Yak, Gonzalvo & Mazzawi (2019, arXiv 1906.01550) trained 13,500 networks on variations of spiral "
            "datasets. Their abstract, quoted: \"" + YAK_ABSTRACT + "\" It does not say which of the three settings "
            "the 0.584 belongs to, so we map neither figure to one of our splits and set no goal from them.")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Predictors, splits, metrics and the feature ablation."""

    predictors: tuple[str, ...] = option(doc="linear (Jiang), mlp (Yak's DNN), gbm, rnn (Yak's RNN over layers)",
                                         choices=ZOO_PREDICTORS, default_factory=lambda: ZOO_PREDICTORS)
    splits: tuple[str, ...] = option(doc="grouped evaluation splits", choices=SPLITS, default_factory=lambda: SPLITS)
    target: str = option("gap", "what to predict: gap (test - train error) or loss_gap (test - train loss)",
                         choices=("gap", "loss_gap"))
    n_folds: int = option(5, "folds of the random split", min=2)
    family_keys: tuple[str, ...] = option(doc="task knobs whose values define a task family (task_family split, "
                                              "the task-disjoint splits, the family bootstrap, within-family R²)",
                                          choices=("arms", "turns", "noise", "n_train", "label_noise"),
                                          default_factory=lambda: ("arms", "noise"))
    n_family_folds: int = option(3, "folds of task families in the task-disjoint out-of-distribution splits", min=2)
    n_bootstrap: int = option(1000, "bootstrap resamples (of task families) for the R² interval", min=10)
    min_networks: int = option(20, "fewest zoo rows to fit on (fewer is an error)", min=4)
    rnn_epochs: int = option(150, "training epochs of the rnn predictor", min=1)
    ablation_sets: tuple[str, ...] = option(doc="feature sets of the ablation (empty: no ablation)",
                                            choices=FEATURE_SETS, default_factory=lambda: FEATURE_SETS)
    ablation_predictors: tuple[str, ...] = option(doc="predictors refitted on every ablation feature set",
                                                  choices=ZOO_PREDICTORS,
                                                  default_factory=lambda: ("linear", "mlp", "gbm"))
    ablation_splits: tuple[str, ...] = option(doc="splits of the ablation", choices=SPLITS,
                                              default_factory=lambda: ("task_family",) + OUT_OF_DISTRIBUTION_SPLITS)
    permutation_predictors: tuple[str, ...] = option(doc="predictors refitted on shuffled targets (random split) "
                                                         "as a check that held-out R² collapses without signal",
                                                     choices=ZOO_PREDICTORS,
                                                     default_factory=lambda: ("linear", "gbm"))
    n_jobs: int = option(2, "processes fitting predictors in parallel (results do not depend on it)", min=1)

    def __post_init__(self):
        for name in ("predictors", "splits", "family_keys"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"fit.{name} is empty; give at least one value")


@dataclasses.dataclass(frozen=True)
class FitResult:
    r2_table: list[dict]           # one row per (split, predictor): r2, interval, kendall_tau, within-family r2, ...
    ablation: list[dict]           # one row per (split, feature set, predictor): r2, interval, within-family r2
    permutation_check: list[dict]  # held-out R² on shuffled targets, per predictor
    predictors: bytes              # pickled {name: ZooPredictor} fitted on the whole zoo (libs.spiral_predictors)
    feature_names: list[str]
    best: dict                     # split -> best predictor by R²
    scatter: dict                  # split -> {"predictor", "measured", "predicted"} (held-out rows)
    importances: list[list]        # [name, permutation importance] of the gbm on a random 80/20 split, top first
    n_networks: int
    target: str
    seconds: float


def merge_shards(shard_rows: list[list[dict]]) -> list[dict]:
    """The zoo: every shard's rows, in network-id order (errors if two shards trained the same network)."""
    rows = sorted((r for rows in shard_rows for r in rows), key=lambda r: r["network_id"])
    ids = [r["network_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("two shards returned the same network id; the shard plan overlaps")
    return rows


def zoo_inputs(rows: list[dict], names: list[str] | None = None) -> tuple[np.ndarray, list[str], list]:
    """Flat feature matrix (n, f) and the per-layer signature sequences of zoo rows.

    Columns: the network's gap features (``libs.spiral_features.mlp_gap_features``, plus the task's
    ``train_knn_error`` and ``log_nn_distance``), and what is known without any test data: depth,
    log2 width, number of classes (the output width) and log training-set size.
    """
    flat = [dict(r["features"], depth=float(r["hparams"]["depth"]), log2_width=math.log2(r["hparams"]["width"]),
                 n_classes=float(r["task"]["arms"]), log_n_train=math.log(r["task"]["n_train"])) for r in rows]
    x, names = feature_matrix(flat, names)
    sequences = [np.asarray(r["layer_signatures"], dtype=np.float64) for r in rows]
    for i, s in enumerate(sequences):
        if s.ndim != 2 or not np.isfinite(s).all():
            raise ValueError(f"layer_signatures of row {i} (network {rows[i].get('network_id')}) are not a finite "
                             "(layers, 5) array")
    return x, names, sequences


def _fit_predict(name: str, seed: int, rnn_epochs: int, x_train, seq_train, y_train, x_test, seq_test):
    """Fit one predictor and predict held-out rows (``x_test`` None: return the fitted predictor)."""
    model = ZooPredictor(name, seed, rnn_epochs=rnn_epochs).fit(x_train, seq_train, y_train)
    return model if x_test is None else model.predict(x_test, seq_test)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_jobs(jobs: dict, n_jobs: int) -> dict:
    """Run ``_fit_predict(*args)`` for every job, in ``n_jobs`` processes when more than one (slow fits first)."""
    if n_jobs <= 1:
        return {key: _fit_predict(*args) for key, args in jobs.items()}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    order = sorted(jobs, key=lambda k: (jobs[k][0] != "rnn", -len(jobs[k][5])))
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures = {key: pool.submit(_fit_predict, *jobs[key]) for key in order}
        return {key: future.result() for key, future in futures.items()}


def _held_out(done: dict, key: tuple, folds: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows every fold tests (in fold order) and their out-of-fold predictions."""
    pred = np.full(n, np.nan)
    for k, (_, test) in enumerate(folds):
        pred[test] = done[key + (k,)]
    rows = np.concatenate([te for _, te in folds])
    return rows, pred[rows]


def run(cfg: FitConfig, rows: list[dict], *, seed: int) -> FitResult:
    """Score every predictor on every split, run the ablation and the permutation check, fit on the whole zoo.

    Every (split, predictor, feature set, fold) fit is independent; with ``cfg.n_jobs > 1`` they
    run in that many processes (one torch thread each). The results do not depend on ``n_jobs``.
    """
    if len(rows) < cfg.min_networks:
        raise ValueError(f"the zoo has {len(rows)} networks, fewer than fit.min_networks={cfg.min_networks}; "
                         "grow zoo.n_tasks or zoo.networks_per_architecture")
    start = time.perf_counter()
    x, names, sequences = zoo_inputs(rows)
    y = np.array([r[cfg.target] for r in rows], dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"a measured {cfg.target} in the zoo is not finite")
    families = task_families(rows, cfg.family_keys)
    shuffled = np.random.default_rng([seed, 7]).permutation(y)
    splits = {split: split_folds(split, rows, n_folds=cfg.n_folds, random_state=seed, family_keys=cfg.family_keys,
                                 n_family_folds=cfg.n_family_folds)[0]
              for split in dict.fromkeys(cfg.splits + cfg.ablation_splits + ("random",))}
    columns = {fs: feature_columns(names, fs) for fs in cfg.ablation_sets}

    def add(jobs, key, name, cols, target, split):
        for k, (train, test) in enumerate(splits[split]):
            jobs[key + (k,)] = (name, seed, cfg.rnn_epochs, x[np.ix_(train, cols)], [sequences[i] for i in train],
                                target[train], x[np.ix_(test, cols)], [sequences[i] for i in test])

    every = list(range(len(names)))
    jobs: dict = {}
    for split in cfg.splits:
        for name in cfg.predictors:
            add(jobs, ("main", split, name), name, every, y, split)
    for split in cfg.ablation_splits:
        for fs in cfg.ablation_sets:
            for name in cfg.ablation_predictors:
                if not (fs == "all" and split in cfg.splits and name in cfg.predictors):   # else the main table's
                    add(jobs, ("ablation", split, fs, name), name, columns[fs], y, split)
    for name in cfg.permutation_predictors:
        add(jobs, ("shuffled", "random", name), name, every, shuffled, "random")
    for name in cfg.predictors:
        jobs[("all", name, 0)] = (name, seed, cfg.rnn_epochs, x, sequences, y, None, None)
    done = _run_jobs(jobs, cfg.n_jobs)

    def scores(key: tuple, split: str) -> tuple[dict, np.ndarray, np.ndarray]:
        test_rows, pt = _held_out(done, key, splits[split], len(y))
        yt, ft = y[test_rows], families[test_rows]
        low, high = bootstrap_r2(yt, pt, groups=ft, n_boot=cfg.n_bootstrap, random_state=seed)
        return ({"r2": r2_score(yt, pt), "r2_low": low, "r2_high": high, "within_family_r2": within_family_r2(yt, pt, ft),
                 "kendall_tau": kendall_tau(yt, pt), "n_test": int(len(test_rows)),
                 "n_test_families": int(len(np.unique(ft))), "n_folds": len(splits[split])}, test_rows, pt)

    table, scatter, best = [], {}, {}
    for split in cfg.splits:
        for name in cfg.predictors:
            row, test_rows, pt = scores(("main", split, name), split)
            info = conditioned_ranking_information(y[test_rows], pt, [rows[i]["hparams"] for i in test_rows],
                                                   RANKING_HPARAMS, random_state=seed)
            row = {"split": split, "predictor": name, **row, "ranking_information": info["score"],
                   "ranking_conditioned_on": info["conditioned_on"]}
            table.append(row)
            if split not in best or row["r2"] > best[split]["r2"]:
                best[split] = row
                scatter[split] = {"predictor": name, "measured": y[test_rows].tolist(), "predicted": pt.tolist()}
    ablation = []
    for split in cfg.ablation_splits:
        for fs in cfg.ablation_sets:
            for name in cfg.ablation_predictors:
                key = ("main", split, name) if ("main", split, name, 0) in done and fs == "all" else \
                    ("ablation", split, fs, name)
                row, _, _ = scores(key, split)
                ablation.append({"split": split, "feature_set": fs, "predictor": name,
                                 "n_features": len(columns[fs]), **row})
    permutation = []
    for name in cfg.permutation_predictors:
        test_rows, pt = _held_out(done, ("shuffled", "random", name), splits["random"], len(y))
        permutation.append({"split": "random", "predictor": name, "r2_shuffled_targets": r2_score(shuffled[test_rows], pt)})
    fitted = {name: done[("all", name, 0)] for name in cfg.predictors}
    return FitResult(r2_table=table, ablation=ablation, permutation_check=permutation, predictors=pickle.dumps(fitted),
                     feature_names=names, best={s: r["predictor"] for s, r in best.items()}, scatter=scatter,
                     importances=_importances(x, y, names, seed), n_networks=len(rows), target=cfg.target,
                     seconds=time.perf_counter() - start)


def _importances(x: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> list[list]:
    """Permutation importance (drop in held-out R²) of the gbm predictor on one random 80/20 split."""
    from sklearn.inspection import permutation_importance

    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    model = make_spiral_regressor("gbm", seed).fit(x[order[:cut]], y[order[:cut]])
    imp = permutation_importance(model, x[order[cut:]], y[order[cut:]], n_repeats=5, random_state=seed)
    pairs = sorted(zip(names, imp.importances_mean.tolist()), key=lambda p: -p[1])
    return [[n, float(v)] for n, v in pairs]


def out_of_distribution_summary(r2_table: list[dict]) -> dict:
    """The best predictor on each task-disjoint out-of-distribution split, with its interval."""
    out = {}
    for split in OUT_OF_DISTRIBUTION_SPLITS:
        rows = [r for r in r2_table if r["split"] == split and math.isfinite(r["r2"])]
        if rows:
            b = max(rows, key=lambda r: r["r2"])
            out[split] = {"best_predictor": b["predictor"], "r2": b["r2"], "r2_ci_family_bootstrap": [b["r2_low"], b["r2_high"]],
                          "within_family_r2": b["within_family_r2"], "kendall_tau": b["kendall_tau"],
                          "n_test": b["n_test"], "n_test_families": b["n_test_families"]}
    return out


def _f(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3f}"


def report(result: FitResult) -> list:
    """The fit step's card: the R² table, the ablation, the permutation check, scatter plots, importances."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [Markdown(f"## Generalization-gap predictors on a zoo of {result.n_networks} spiral MLPs\n\n"
                      f"Target: `{result.target}`. Fit in {result.seconds:.0f} s. Intervals: 95% bootstrap over task "
                      "families. Within-family R² is measured against each family's own mean gap.\n\n" + YAK_NOTE),
             Table(["split", "predictor", "R²", "95% CI", "within-family R²", "Kendall τ", "ranking info (cond. on)",
                    "held-out rows (families)"],
                   [[r["split"], r["predictor"], _f(r["r2"]), f"[{_f(r['r2_low'])}, {_f(r['r2_high'])}]",
                     _f(r["within_family_r2"]), _f(r["kendall_tau"]),
                     f"{_f(r['ranking_information'])} ({r['ranking_conditioned_on']})",
                     f"{r['n_test']} ({r['n_test_families']})"] for r in result.r2_table],
                   title="Held-out R² per split and predictor")]
    if result.ablation:
        items.append(Table(["split", "feature set", "features", "predictor", "R²", "95% CI", "within-family R²"],
                           [[r["split"], r["feature_set"], r["n_features"], r["predictor"], _f(r["r2"]),
                             f"[{_f(r['r2_low'])}, {_f(r['r2_high'])}]", _f(r["within_family_r2"])]
                            for r in result.ablation], title="Feature ablation: what carries the R²"))
    if result.permutation_check:
        items.append(Table(["predictor", "held-out R², shuffled targets (random split)"],
                           [[r["predictor"], _f(r["r2_shuffled_targets"])] for r in result.permutation_check],
                           title="Permutation check"))
    for split, data in result.scatter.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
        ax.scatter(data["measured"], data["predicted"], s=8, alpha=0.5)
        values = data["measured"] + data["predicted"]
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel(f"measured {result.target}")
        ax.set_ylabel(f"predicted ({data['predictor']})")
        ax.set_title(f"{split}: held-out networks")
        fig.tight_layout()
        items.append(Figure(fig, title=f"Predicted vs measured, {split} split, best predictor {data['predictor']}"))
    top = result.importances[:12]
    if top:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.barh([n for n, _ in top][::-1], [v for _, v in top][::-1])
        ax.set_xlabel("permutation importance (drop in held-out R²)")
        ax.set_title("Feature importances (gbm, random 80/20 split)")
        fig.tight_layout()
        items.append(Figure(fig, title="Feature importances"))
    return items


def summary(r2_table: list[dict], ablation: list[dict], *, n_networks: int, n_trained: int, n_diverged: int,
            n_collapsed: int, train_seconds: float, fit_seconds: float) -> list:
    """The end step's card: the best predictor per split and the ablation's best R² per feature set."""
    best = {}
    for r in r2_table:
        if r["split"] not in best or r["r2"] > best[r["split"]]["r2"]:
            best[r["split"]] = r
    rows = [[s, b["predictor"], f"{_f(b['r2'])} [{_f(b['r2_low'])}, {_f(b['r2_high'])}]", _f(b["within_family_r2"])]
            for s, b in best.items()]
    text = (f"## GapZooFlow: {n_networks} networks in the zoo\n\n{n_trained} trained; {n_diverged} diverged and "
            f"{n_collapsed} collapsed to a constant function (no rows); training {train_seconds:.0f} s summed over "
            f"shards, fitting {fit_seconds:.0f} s.\n\n" + YAK_NOTE)
    items = [Markdown(text), Table(["split", "best predictor", "R² [95% CI, family bootstrap]", "within-family R²"],
                                   rows, title="Best held-out R² per split")]
    by_set: dict = {}
    for r in ablation:
        k = (r["split"], r["feature_set"])
        if k not in by_set or r["r2"] > by_set[k]["r2"]:
            by_set[k] = r
    if by_set:
        items.append(Table(["split", "feature set", "best predictor", "R²"],
                           [[s, fs, r["predictor"], _f(r["r2"])] for (s, fs), r in by_set.items()],
                           title="Ablation: best R² per feature set"))
    return items
