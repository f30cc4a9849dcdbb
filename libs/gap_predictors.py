"""Generalization-gap predictors over feature dicts, evaluated with grouped splits.

Predictors (scikit-learn estimators behind one small interface): ``linear`` (ridge regression
on the log-features, after standardisation: Jiang et al.), ``mlp`` (a small MLP: Yak et al.'s
DNN), ``gbm`` (gradient boosting). Evaluation holds out whole groups (a model, a run, an
architecture) so that no checkpoint of a held-out network leaks into training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PREDICTORS", "make_predictor", "feature_matrix", "leave_one_group_out", "r2_score", "kendall_tau"]

PREDICTORS = ("linear", "mlp", "gbm")


def make_predictor(name: str, random_state: int = 0):
    """A fresh, unfitted scikit-learn regressor (a pipeline with standardisation)."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "linear":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if name == "mlp":
        return make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32, 32), alpha=1e-3, max_iter=3000,
                                                            random_state=random_state))
    if name == "gbm":
        return GradientBoostingRegressor(n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8,
                                         random_state=random_state)
    raise ValueError(f"unknown predictor {name!r}; choose from {PREDICTORS}")


def feature_matrix(rows: list[dict], names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Stack feature dicts into (n, f) float64 with a fixed column order; errors on NaN or missing keys."""
    if not rows:
        raise ValueError("no feature rows")
    names = sorted(rows[0]) if names is None else names
    x = np.empty((len(rows), len(names)))
    for i, row in enumerate(rows):
        missing = set(names) - set(row)
        if missing:
            raise ValueError(f"feature row {i} lacks {sorted(missing)}; every row needs the same features")
        x[i] = [row[n] for n in names]
    if not np.isfinite(x).all():
        i, j = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"feature {names[j]!r} of row {i} is {x[i, j]}; features must be finite")
    return x, names


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def kendall_tau(y: np.ndarray, pred: np.ndarray) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(y, pred).statistic)


def leave_one_group_out(name: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                        random_state: int = 0) -> np.ndarray:
    """Out-of-group predictions: each group predicted by a model fitted on all other groups."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"leave-one-group-out needs at least 2 groups, got {len(unique)}")
    pred = np.empty(len(y))
    for g in unique:
        test = groups == g
        model = make_predictor(name, random_state).fit(x[~test], y[~test])
        pred[test] = model.predict(x[test])
    return pred
