"""Generalization-gap predictors over feature dicts, evaluated with grouped splits.

Predictors (scikit-learn estimators behind one small interface): ``linear`` (ridge regression
on the log-features, after standardisation: Jiang et al.), ``mlp`` (a small MLP: Yak et al.'s
DNN), ``gbm`` (gradient boosting). Evaluation holds out whole models (every checkpoint of a
held-out model), so that no checkpoint of a held-out network leaks into training.
:func:`fit_gap_predictors` scores every predictor by leave-one-model-out R² and Kendall τ, names
the best only when the zoo has enough distinct models, and keeps the held-out residuals that
give a prediction its interval; :func:`extrapolation_reasons` says where a target lies outside
the zoo.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PREDICTORS", "make_predictor", "feature_matrix", "leave_one_group_out", "r2_score", "kendall_tau",
           "GapFit", "fit_gap_predictors", "extrapolation_reasons", "predict_with_interval"]

PREDICTORS = ("linear", "mlp", "gbm")


def make_predictor(name: str, random_state: int = 0):
    """A fresh, unfitted scikit-learn regressor (a pipeline with standardisation)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "linear":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if name == "mlp":   # the target standardised too: gaps of ~0.01-0.2 otherwise leave the MLP badly scaled
        mlp = MLPRegressor(hidden_layer_sizes=(32, 32), alpha=1e-2, max_iter=2000, random_state=random_state)
        return make_pipeline(StandardScaler(), TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler()))
    if name == "gbm":
        return GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8,
                                         random_state=random_state)
    raise ValueError(f"unknown predictor {name!r}; choose from {PREDICTORS}")


def feature_matrix(rows: list[dict], names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Stack feature dicts into (n, f) float64 with a fixed column order; errors on NaN or missing keys."""
    if not rows:
        raise ValueError("no feature rows")
    names = sorted(rows[0]) if names is None else list(names)
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


@dataclasses.dataclass
class GapFit:
    """Predictors fitted on a zoo, their held-out scores and what a prediction's interval rests on.

    ``best`` is None when the zoo has fewer than ``min_models`` distinct models (then ``chosen``,
    the predictor used, is the first one asked for, and the card says no best was named).
    ``abs_residuals[name]``: |held-out residual| of every row (leave-one-model-out).
    """

    names: list[str]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    table: list[dict]
    fitted: dict
    oof: dict
    best: str | None
    chosen: str
    n_models: int
    min_models: int

    def interval_half_width(self, level: float) -> float:
        res = self.oof.get(self.chosen)
        if res is None:
            return float("nan")
        return float(np.quantile(np.abs(self.y - res), level))


def fit_gap_predictors(rows: list[dict], predictors: tuple[str, ...], *, min_models: int = 8,
                       random_state: int = 0, target: str = "gap") -> GapFit:
    """Score ``predictors`` by leave-one-model-out R² and Kendall τ on ``rows``; fit each on all rows.

    ``rows``: dicts with ``features`` (dict), ``target`` (float, default ``gap``) and ``group``
    (the model: every checkpoint of one model shares it).
    """
    if not predictors:
        raise ValueError("no predictors asked for; list at least one of " + ", ".join(PREDICTORS))
    x, names = feature_matrix([r["features"] for r in rows])
    y = np.array([r[target] for r in rows], dtype=np.float64)
    if not np.isfinite(y).all():
        raise ValueError(f"a measured {target} in the zoo is not finite; check the models' losses")
    groups = np.array([str(r["group"]) for r in rows])
    n_models = len(np.unique(groups))
    table, fitted, oof = [], {}, {}
    for name in predictors:
        row = {"predictor": name, "loo_model_r2": float("nan"), "kendall_tau": float("nan")}
        if n_models >= 2:
            pred = leave_one_group_out(name, x, y, groups, random_state=random_state)
            oof[name] = pred
            row.update(loo_model_r2=r2_score(y, pred), kendall_tau=kendall_tau(y, pred))
        fitted[name] = make_predictor(name, random_state).fit(x, y)
        table.append(row)
    best = None
    scored = [r for r in table if np.isfinite(r["loo_model_r2"])]
    if n_models >= min_models and scored:
        best = max(scored, key=lambda r: r["loo_model_r2"])["predictor"]
    return GapFit(names=names, x=x, y=y, groups=groups, table=table, fitted=fitted, oof=oof, best=best,
                  chosen=best or predictors[0], n_models=n_models, min_models=min_models)


def extrapolation_reasons(x_zoo: np.ndarray, names: list[str], target: dict[str, float], *,
                          tolerance: float = 0.02) -> list[str]:
    """Features of ``target`` outside the zoo's range (widened by ``tolerance`` of the range), one line each."""
    reasons = []
    lo, hi = x_zoo.min(0), x_zoo.max(0)
    slack = tolerance * (hi - lo)
    for j, name in enumerate(names):
        v = float(target[name])
        if v < lo[j] - slack[j] or v > hi[j] + slack[j]:
            side = "above" if v > hi[j] else "below"
            reasons.append(f"{name} = {v:.4g} is {side} the zoo's range [{lo[j]:.4g}, {hi[j]:.4g}]")
    return reasons


def predict_with_interval(fit: GapFit, features: dict[str, float], *, level: float = 0.9) -> dict:
    """The chosen predictor's value for ``features``, every predictor's, an interval and the extrapolation check.

    The interval is the prediction +- the ``level`` quantile of the chosen predictor's absolute
    leave-one-model-out residuals on the zoo (split-conformal in spirit; valid for targets like
    the zoo's models, not outside its range, which ``extrapolation`` flags).
    """
    tx, _ = feature_matrix([features], fit.names)
    per = {name: float(model.predict(tx)[0]) for name, model in fit.fitted.items()}
    point = per[fit.chosen]
    half = fit.interval_half_width(level)
    reasons = extrapolation_reasons(fit.x, fit.names, features)
    return {"predicted": point, "low": point - half, "high": point + half, "level": level,
            "by_predictor": per, "extrapolation": bool(reasons), "extrapolation_reasons": reasons}
