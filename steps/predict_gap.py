"""Stage 5: predict the large models' generalization gaps (and validation losses) from a zoo of checkpoints.

The zoo holds one row per checkpoint of a small language model: its training-data features
(:mod:`libs.gap_features`) and its measured gap (validation loss on every validation row minus
training loss on one fixed training-evaluation subset). Rows come from

* the latest successful LMZooFlow run whose data fingerprint (tokenizer + token arrays) and
  measurement fingerprint match this run's (the flow finds it: ``flows/zoo_client.py``),
* this run's own small-model checkpoints,
* earlier successful GrowthFlow runs with the same fingerprints that finished before this run
  started (:func:`select_earlier_runs`),

de-duplicated by (config, seed, model) (:func:`dedup_rows`: a rerun or a resume copy adds
nothing) and grouped by model. Every predictor is scored by leave-one-model-out R²; a best one
is named only with at least ``min_models`` distinct models. Each large arm gets a predicted gap
and validation loss with an interval from the held-out residuals, and the verdict
"extrapolation" with the reasons when its features lie outside the zoo's range.
"""

from __future__ import annotations

import dataclasses
import pickle
from datetime import datetime

import numpy as np

from libs.gap_predictors import PREDICTORS, fit_gap_predictors, predict_with_interval
from libs.report import Figure, Markdown, Table
from libs.schema import option
from steps.fit_zoo import COVARIATES, score_subset

__all__ = ["GapConfig", "GapResult", "run", "report", "select_earlier_runs", "dedup_rows", "verdict_of"]


@dataclasses.dataclass(frozen=True)
class GapConfig:
    """Gap-predictor settings."""

    predictors: tuple[str, ...] = option(doc="predictors to fit: linear (Jiang), mlp (Yak's DNN), gbm",
                                         choices=PREDICTORS, default_factory=lambda: PREDICTORS)
    min_zoo_rows: int = option(4, "fewest zoo rows to fit on (fewer is an error)", min=2)
    min_models: int = option(8, "fewest distinct zoo models before a best predictor is named (else the first "
                             "of predictors is used and the card says so)", min=2)
    interval_level: float = option(0.9, "coverage of the prediction interval (quantile of the held-out "
                                   "absolute residuals)", min=0.5, max=0.99)
    train_eval_rows: int = option(256, "the fixed training-evaluation subset every gap of this run is measured "
                                  "on (drawn from the selected rows); must equal the LM zoo's", min=8)
    feature_rows: int = option(64, "training-evaluation rows the features are computed on; must equal the LM "
                               "zoo's", min=4)
    gc_probes: int = option(2, "Hutchinson probes of the geometric complexity (0 = exact; tiny models only)", min=0)
    use_lm_zoo: bool = option(True, "add the rows of the latest successful LM zoo run (flows/lm_zoo_flow.py) "
                              "whose data and measurement fingerprints match this run's")
    lm_zoo_flow: str = option("LMZooFlow", "the flow name of the LM zoo")
    include_earlier_runs: bool = option(True, "add the rows of earlier successful runs of this flow with the "
                                        "same fingerprints that finished before this run started")
    max_earlier_runs: int = option(20, "at most this many earlier runs", min=0)

    def __post_init__(self) -> None:
        if self.feature_rows > self.train_eval_rows:
            raise ValueError(f"feature_rows={self.feature_rows} exceeds train_eval_rows={self.train_eval_rows}")


@dataclasses.dataclass(frozen=True)
class GapResult:
    predictors: bytes                  # pickled {name: fitted scikit-learn regressor}
    feature_names: list[str]
    r2_table: list[dict]
    best_predictor: str                # "" when the zoo has fewer than min_models models
    chosen_predictor: str
    predictions: dict[str, dict]
    n_zoo_rows: int
    n_zoo_models: int
    n_duplicate_rows: int
    zoo_gaps: list[float]
    zoo_predicted: list[float]
    sources: list[dict]                # the runs whose rows were used: flow, run_id, rows, models, role
    excluded: list[dict]               # runs looked at and left out, with the reason
    baseline: dict                     # the chosen predictor on the covariates alone (steps.fit_zoo.COVARIATES)


def select_earlier_runs(candidates: list[dict], *, this_run_id: str, this_created_at: datetime,
                        data_fingerprint: str, measurement_fingerprint: str,
                        max_runs: int) -> tuple[list[dict], list[dict]]:
    """Which earlier runs may lend their rows: (kept, excluded with reasons).

    ``candidates``: dicts with ``run_id``, ``successful``, ``created_at``, ``finished_at``
    (datetimes or None), ``data_fingerprint``, ``measurement_fingerprint``, newest first. A run is
    kept when it is not this run, finished successfully before this run was created (never a
    run still running or started after this one) and both fingerprints match; at most
    ``max_runs`` are kept.
    """
    kept, excluded = [], []
    for c in candidates:
        reason = None
        if c["run_id"] == this_run_id:
            continue
        if not c.get("successful"):
            reason = "not successful (failed or still running)"
        elif c.get("finished_at") is None or c["finished_at"] >= this_created_at:
            reason = "finished after this run started"
        elif c.get("data_fingerprint") != data_fingerprint:
            reason = "other corpus or tokenizer (data fingerprint differs)"
        elif c.get("measurement_fingerprint") != measurement_fingerprint:
            reason = "rows measured another way (measurement fingerprint differs)"
        elif len(kept) >= max_runs:
            reason = f"beyond max_earlier_runs={max_runs}"
        if reason:
            excluded.append({"run_id": c["run_id"], "reason": reason})
        else:
            kept.append(c)
    return kept, excluded


def own_rows(settings: dict, rows: list[dict]) -> list[dict]:
    """This run's zoo rows, keyed for de-duplication across runs by everything that shaped them.

    The key is the fingerprint of the run's settings without ``predict_gap`` and ``resources``
    (they change neither the models nor their rows), seed included, plus the model name: an
    identical earlier run (same config, same seed) yields the same keys and is dropped once.
    """
    from libs.fingerprint import settings_fingerprint

    config_key = settings_fingerprint({k: v for k, v in settings.items() if k not in ("predict_gap", "resources")})
    return [dict(r, key=f"{config_key}:{r['model']}") for r in rows]


def dedup_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """Keep each model key's rows from the first source that has it; returns (rows, rows dropped).

    A row's ``key`` is (config fingerprint, seed, model name) in one string; ``source`` names the
    run it came from. Identical reruns and resume copies carry the same keys and add nothing.
    """
    owner: dict[str, str] = {}
    out = []
    for r in rows:
        key, source = r["key"], r.get("source", "")
        if owner.setdefault(key, source) == source:
            out.append(r)
    return out, len(rows) - len(out)


def verdict_of(p: dict) -> str:
    """One line for a user: the interval, or "extrapolation" with the reasons."""
    if p["extrapolation"]:
        return ("extrapolation: " + "; ".join(p["extrapolation_reasons"])
                + f" (the zoo's point estimate {p['predicted']:.3f} is not a prediction)")
    return (f"gap {p['predicted']:.3f} [{p['low']:.3f}, {p['high']:.3f}] ({p['level']:.0%} interval), "
            f"validation loss {p['val_loss_predicted']:.3f} [{p['val_loss_low']:.3f}, {p['val_loss_high']:.3f}]")


def run(cfg: GapConfig, *, zoo_rows: list[dict], targets: dict[str, dict], seed: int,
        sources: list[dict] | None = None, excluded: list[dict] | None = None) -> GapResult:
    """Fit on ``zoo_rows``; predict ``targets``.

    ``zoo_rows``: dicts with ``features``, ``gap``, ``model``, ``key`` and ``source`` (run id).
    ``targets``: arm -> dict with ``features`` and ``gap`` (a row of :func:`libs.gap_features.checkpoint_row`;
    ``train_loss`` defaults to ``features["train_loss"]``, ``val_loss`` to ``train_loss + gap``).
    """
    rows, n_dup = dedup_rows([dict(r, key=r.get("key", r["model"])) for r in zoo_rows])
    if len(rows) < cfg.min_zoo_rows:
        raise ValueError(f"the gap zoo has {len(rows)} rows, fewer than predict_gap.min_zoo_rows="
                         f"{cfg.min_zoo_rows}; run the LM zoo (flows/lm_zoo_flow.py) with this run's prepare "
                         "settings and seed, or evaluate the small models more often")
    fit = fit_gap_predictors([dict(r, group=r["key"]) for r in rows], cfg.predictors, min_models=cfg.min_models,
                             random_state=seed)
    predictions = {}
    for arm, target in targets.items():
        p = predict_with_interval(fit, target["features"], level=cfg.interval_level)
        base = float(target["train_loss"] if "train_loss" in target else target["features"]["train_loss"])
        p.update(val_loss_predicted=base + p["predicted"], val_loss_low=base + p["low"],
                 val_loss_high=base + p["high"], measured=float(target["gap"]),
                 measured_val_loss=float(target.get("val_loss", base + float(target["gap"]))))
        p["abs_error"] = abs(p["predicted"] - p["measured"])
        p["rel_error"] = p["abs_error"] / abs(p["measured"]) if p["measured"] else float("inf")
        p["within_interval"] = bool(p["low"] <= p["measured"] <= p["high"])
        p["verdict"] = verdict_of(p)
        predictions[arm] = p
    source_rows: dict[str, list[dict]] = {}
    for r in rows:
        source_rows.setdefault(r.get("source", ""), []).append(r)
    used = []
    for s in sources or [{"run_id": k} for k in source_rows]:
        mine = source_rows.get(str(s["run_id"]), [])
        used.append(dict(s, rows=len(mine), models=len({r["key"] for r in mine})))
    oof = fit.oof.get(fit.chosen, np.full(len(fit.y), np.nan))
    baseline = {"predictor": fit.chosen, "loo_model_r2": float("nan"), "kendall_tau": float("nan")}
    if fit.n_models >= 2 and all(c in fit.names for c in COVARIATES):
        baseline = score_subset(rows, COVARIATES, fit.chosen, seed=seed)
    return GapResult(predictors=pickle.dumps(fit.fitted), feature_names=fit.names, r2_table=fit.table,
                     best_predictor=fit.best or "", chosen_predictor=fit.chosen, predictions=predictions,
                     n_zoo_rows=len(rows), n_zoo_models=fit.n_models, n_duplicate_rows=n_dup,
                     zoo_gaps=fit.y.tolist(), zoo_predicted=[float(v) for v in oof], sources=used,
                     excluded=list(excluded or []), baseline=baseline)


def report(result: GapResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(result.zoo_gaps, result.zoo_predicted, s=12, alpha=0.6, label="zoo (held-out model)")
    for arm, p in result.predictions.items():
        ax.errorbar([p["measured"]], [p["predicted"]], yerr=[[p["predicted"] - p["low"]], [p["high"] - p["predicted"]]],
                    marker="x" if p["extrapolation"] else "*", ms=12, capsize=3,
                    label=f"{arm}" + (" (extrapolation)" if p["extrapolation"] else ""))
    values = [v for v in result.zoo_gaps + result.zoo_predicted if np.isfinite(v)]
    values += [v for p in result.predictions.values() for v in (p["measured"], p["predicted"])]
    if values:
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("measured gap (val loss - train loss)")
    ax.set_ylabel(f"predicted gap ({result.chosen_predictor})")
    ax.set_title("Predicted vs measured generalization gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    named = (f"best predictor by leave-one-model-out R²: `{result.best_predictor}`" if result.best_predictor else
             f"**no best predictor named**: {result.n_zoo_models} distinct models is fewer than "
             f"predict_gap.min_models (using `{result.chosen_predictor}`)")
    lines = [f"- `{arm}`: {p['verdict']}; measured gap {p['measured']:.3f}, validation loss "
             f"{p['measured_val_loss']:.3f}" for arm, p in result.predictions.items()]
    items = [
        Markdown(f"## Generalization gap\n\nZoo: {result.n_zoo_rows} checkpoints of {result.n_zoo_models} models"
                 f" ({result.n_duplicate_rows} duplicate rows of reruns left out); {named}.\n\n" + "\n".join(lines)),
        Table(["flow", "run", "role", "rows", "models"],
              [[s.get("flow", ""), s["run_id"], s.get("role", ""), s["rows"], s["models"]] for s in result.sources],
              title="Runs whose rows were used"),
        Table(["predictor", "leave-one-model-out R²", "Kendall τ"],
              [[r["predictor"], f"{r['loo_model_r2']:.3f}", f"{r['kendall_tau']:.3f}"] for r in result.r2_table]
              + [[f"{result.baseline['predictor']} on covariates only (baseline)",
                  f"{result.baseline['loo_model_r2']:.3f}", f"{result.baseline['kendall_tau']:.3f}"]],
              title="Predictors (the baseline: parameters, epochs, parameters per token, learning rate alone)"),
        Table(["arm", "predicted gap", "interval", "measured gap", "|error| / measured", "extrapolation"],
              [[arm, f"{p['predicted']:.4f}", f"[{p['low']:.4f}, {p['high']:.4f}]", f"{p['measured']:.4f}",
                f"{p['rel_error']:.0%}", "; ".join(p["extrapolation_reasons"]) or "no"]
               for arm, p in result.predictions.items()], title="Large arms"),
        Figure(fig, title="Predicted vs measured"),
    ]
    if result.excluded:
        items.append(Table(["run", "left out because"], [[e["run_id"], e["reason"]] for e in result.excluded],
                           title="Runs looked at and left out"))
    return items
