"""LMZooFlow stage: score the gap predictors on the zoo the shards trained.

Every predictor is scored by leave-one-model-out R² and Kendall τ (a held-out model's
checkpoints never train its predictor), beside two controls: a covariates-only baseline (the
same predictor on parameters, epochs, parameters per token and learning rate alone: what a user
knows without looking at the weights) and a permutation check (the gaps shuffled across rows:
its R² must sit near or below zero, else the scoring leaks).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from libs.gap_predictors import fit_gap_predictors, kendall_tau, leave_one_group_out, r2_score
from libs.report import Figure, Markdown, Table

__all__ = ["COVARIATES", "FitZooResult", "run", "score_subset", "permutation_r2", "report", "report_summary"]

COVARIATES = ("log_n_params", "epochs", "log_params_per_token", "log_lr")


@dataclasses.dataclass(frozen=True)
class FitZooResult:
    table: list[dict]
    best: str | None
    chosen: str
    n_models: int
    n_rows: int
    feature_names: list[str]
    baseline: dict
    permutation_r2: float
    gaps: list[float]
    predicted: list[float]
    seconds: float


def _groups(rows: list[dict]) -> list[dict]:
    return [dict(r, group=r.get("key", r["model"])) for r in rows]


def score_subset(rows: list[dict], names: tuple[str, ...], predictor: str, *, seed: int = 0) -> dict:
    """Leave-one-model-out R² and τ of ``predictor`` on the features ``names`` only."""
    sub = [dict(r, features={n: r["features"][n] for n in names}) for r in _groups(rows)]
    fit = fit_gap_predictors(sub, (predictor,), min_models=2, random_state=seed)
    return dict(fit.table[0], features=list(names))


def permutation_r2(rows: list[dict], predictor: str, *, seed: int = 0) -> float:
    """Leave-one-model-out R² of ``predictor`` after shuffling the gaps across rows (should be <= ~0)."""
    rows = _groups(rows)
    from libs.gap_predictors import feature_matrix

    x, _ = feature_matrix([r["features"] for r in rows])
    y = np.random.default_rng([seed, 99]).permutation([r["gap"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    return r2_score(y, leave_one_group_out(predictor, x, y, groups, random_state=seed))


def run(cfg, rows: list[dict], *, seed: int) -> FitZooResult:
    """Score ``cfg.predictors`` on the zoo ``rows`` (one per checkpoint, grouped by model)."""
    t0 = time.perf_counter()
    if not rows:
        raise ValueError("the zoo has no rows; check zoo.n_checkpoints and that the shards trained")
    fit = fit_gap_predictors(_groups(rows), cfg.predictors, min_models=cfg.min_models, random_state=seed)
    baseline = score_subset(rows, COVARIATES, fit.chosen, seed=seed)
    perm = permutation_r2(rows, fit.chosen, seed=seed) if fit.n_models >= 2 else float("nan")
    pred = fit.oof.get(fit.chosen, np.full(len(fit.y), np.nan))
    return FitZooResult(table=fit.table, best=fit.best, chosen=fit.chosen, n_models=fit.n_models, n_rows=len(rows),
                        feature_names=fit.names, baseline=baseline, permutation_r2=perm, gaps=fit.y.tolist(),
                        predicted=[float(v) for v in pred], seconds=time.perf_counter() - t0)


def report(result: FitZooResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(result.gaps, result.predicted, s=10, alpha=0.6)
    finite = [v for v in result.gaps + result.predicted if np.isfinite(v)]
    if finite:
        ax.plot([min(finite), max(finite)], [min(finite), max(finite)], color="grey", lw=1, ls="--")
    ax.set_xlabel("measured gap (val loss - train loss)")
    ax.set_ylabel(f"held-out prediction ({result.chosen})")
    ax.set_title("LM zoo: leave-one-model-out predictions")
    fig.tight_layout()
    named = (f"best predictor by leave-one-model-out R²: `{result.best}`" if result.best else
             f"no best predictor named: {result.n_models} models, fewer than fit.min_models "
             f"(using `{result.chosen}`)")
    b = result.baseline
    return [
        Markdown(f"## LM zoo fit\n\n{result.n_rows} checkpoints of {result.n_models} models; {named}. "
                 f"Covariates-only baseline ({', '.join(COVARIATES)}; `{b['predictor']}`): R² {b['loo_model_r2']:.3f}, "
                 f"τ {b['kendall_tau']:.3f}. Permutation check (gaps shuffled): R² {result.permutation_r2:.3f}."),
        Table(["predictor", "leave-one-model-out R²", "Kendall τ"],
              [[r["predictor"], f"{r['loo_model_r2']:.3f}", f"{r['kendall_tau']:.3f}"] for r in result.table],
              title="Predictors"),
        Figure(fig, title="Held-out predictions"),
    ]


def report_summary(result: FitZooResult, *, data_fingerprint: str, measurement_fingerprint: str,
                   train_seconds: float) -> list:
    best = max(result.table, key=lambda r: r["loo_model_r2"] if np.isfinite(r["loo_model_r2"]) else -np.inf)
    return [Markdown(f"## LM zoo ready\n\nData fingerprint `{data_fingerprint}`, measurement fingerprint "
                     f"`{measurement_fingerprint}`: GrowthFlow runs whose prepare produced the same tokens use this "
                     f"zoo in `predict_gap`. {result.n_models} models, {result.n_rows} checkpoints, "
                     f"{train_seconds:.0f} s of training summed over the shards; top held-out R² "
                     f"{best['loo_model_r2']:.3f} (`{best['predictor']}`), τ {best['kendall_tau']:.3f}.")]
