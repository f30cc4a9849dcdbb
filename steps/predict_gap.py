"""Stage 5: predict the large models' generalization gaps from a zoo of trained checkpoints.

The zoo holds one row per small-model checkpoint (its training-data features and its
measured gap, validation loss - training loss), from this run and, through the Client API,
from earlier runs (the flow fetches those). Every predictor is scored by leave-one-model-out
R² (a held-out model's checkpoints never train its predictor), fitted on the whole zoo, and
asked for the large models' gaps, which the card sets beside the measured ones.
"""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np

from libs.gap_predictors import PREDICTORS, feature_matrix, kendall_tau, leave_one_group_out, make_predictor, r2_score
from libs.report import Figure, Markdown, Table
from libs.schema import option

__all__ = ["GapConfig", "GapResult", "run", "report"]


@dataclasses.dataclass(frozen=True)
class GapConfig:
    """Gap-predictor settings."""

    predictors: tuple[str, ...] = option(doc="predictors to fit: linear (Jiang), mlp (Yak's DNN), gbm",
                                         choices=PREDICTORS, default_factory=lambda: PREDICTORS)
    min_zoo_rows: int = option(4, "fewest zoo rows to fit on (fewer is an error)", min=2)
    include_earlier_runs: bool = option(True, "add the zoo rows of earlier successful runs (Client API)")
    max_earlier_runs: int = option(20, "at most this many earlier runs", min=0)


@dataclasses.dataclass(frozen=True)
class GapResult:
    predictors: bytes
    feature_names: list[str]
    r2_table: list[dict]
    best_predictor: str
    predictions: dict[str, dict]
    n_zoo_rows: int
    n_zoo_models: int
    zoo_gaps: list[float]
    zoo_predicted: list[float]


def run(cfg: GapConfig, *, zoo_rows: list[dict], targets: dict[str, dict], seed: int) -> GapResult:
    """Fit on ``zoo_rows`` (dicts: features, gap, model[, run_id]); predict ``targets`` (arm -> features, gap)."""
    if len(zoo_rows) < cfg.min_zoo_rows:
        raise ValueError(f"the gap zoo has {len(zoo_rows)} rows, fewer than predict_gap.min_zoo_rows="
                         f"{cfg.min_zoo_rows}; train more small models or evaluate them more often "
                         "(pretrain_small.train.eval_every)")
    x, names = feature_matrix([r["features"] for r in zoo_rows])
    y = np.array([r["gap"] for r in zoo_rows], dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError("a measured gap in the zoo is not finite; check the small models' losses")
    groups = np.array([f"{r.get('run_id', 'this')}:{r['model']}" for r in zoo_rows])
    table, fitted, oof = [], {}, {}
    for name in cfg.predictors:
        row = {"predictor": name, "loo_model_r2": float("nan"), "kendall_tau": float("nan")}
        if len(np.unique(groups)) >= 2:
            pred = leave_one_group_out(name, x, y, groups, random_state=seed)
            oof[name] = pred
            row.update(loo_model_r2=r2_score(y, pred), kendall_tau=kendall_tau(y, pred))
        fitted[name] = make_predictor(name, seed).fit(x, y)
        table.append(row)
    scored = [r for r in table if np.isfinite(r["loo_model_r2"])]
    best = max(scored, key=lambda r: r["loo_model_r2"])["predictor"] if scored else cfg.predictors[0]
    predictions = {}
    for arm, target in targets.items():
        tx, _ = feature_matrix([target["features"]], names)
        per = {name: float(model.predict(tx)[0]) for name, model in fitted.items()}
        predictions[arm] = {"predicted": per[best], "measured": float(target["gap"]),
                            "abs_error": abs(per[best] - float(target["gap"])), "by_predictor": per}
    return GapResult(predictors=pickle.dumps(fitted), feature_names=names, r2_table=table, best_predictor=best,
                     predictions=predictions, n_zoo_rows=len(zoo_rows), n_zoo_models=len(np.unique(groups)),
                     zoo_gaps=y.tolist(), zoo_predicted=oof.get(best, np.full(len(y), np.nan)).tolist())


def report(result: GapResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(result.zoo_gaps, result.zoo_predicted, s=14, alpha=0.7, label="zoo (held-out model)")
    for arm, p in result.predictions.items():
        ax.scatter([p["measured"]], [p["predicted"]], marker="*", s=160, label=f"large: {arm}")
    values = [v for v in result.zoo_gaps + result.zoo_predicted if np.isfinite(v)]
    values += [v for p in result.predictions.values() for v in (p["measured"], p["predicted"])]
    lo, hi = min(values), max(values)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("measured gap (val loss - train loss)")
    ax.set_ylabel(f"predicted gap ({result.best_predictor})")
    ax.set_title("Predicted vs measured generalization gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    lines = [f"`{arm}`: predicted **{p['predicted']:.4f}**, measured {p['measured']:.4f} "
             f"(|error| {p['abs_error']:.4f})" for arm, p in result.predictions.items()]
    return [
        Markdown(f"## Generalization gap\n\nZoo: {result.n_zoo_rows} checkpoints of {result.n_zoo_models} models; "
                 f"best predictor by leave-one-model-out R²: `{result.best_predictor}`.\n\n" + "; ".join(lines)),
        Table(["predictor", "leave-one-model-out R²", "Kendall τ"],
              [[r["predictor"], f"{r['loo_model_r2']:.3f}", f"{r['kendall_tau']:.3f}"] for r in result.r2_table],
              title="Predictors"),
        Figure(fig, title="Predicted vs measured"),
    ]
