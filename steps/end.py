"""The last step: one table of what this run measured, end to end."""

from __future__ import annotations

import dataclasses
from typing import Any

from libs.report import Markdown, Table

__all__ = ["RunSummary", "run", "report"]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    figures: dict[str, Any]
    text: str


def run(*, n_train_docs: int, n_selected: int, selection_method: str, grow_method: str,
        preservation: dict, saving_summary: str, large_final_val_loss: dict[str, float],
        large_tokens_per_s: dict[str, float], gap_predictions: dict[str, dict],
        saving: list[dict] | None = None) -> RunSummary:
    """Collect the run's headline figures into one flat dict (the ``summary`` artifact).

    ``saving`` is ``join_large``'s table (one row per arm); each arm other than the
    target contributes its steps to the scratch model's final validation loss and its
    step and FLOP ratios (after growth, and in total with the small models' pretraining).
    """
    figures: dict[str, Any] = {
        "n_train_docs": n_train_docs, "n_selected": n_selected,
        "selected_fraction": n_selected / max(n_train_docs, 1), "selection_method": selection_method,
        "grow_method": grow_method, "preservation_max_abs_dlogit": preservation.get("max_abs_dlogit"),
    }
    for arm, loss in large_final_val_loss.items():
        figures[f"final_val_loss_{arm}"] = loss
        figures[f"tokens_per_s_{arm}"] = large_tokens_per_s.get(arm)
    has_baseline = any(row["arm"] == "scratch" for row in saving or [])
    for row in saving or []:
        if not has_baseline or row["arm"] == "scratch":
            continue
        for key in ("steps_to_target", "step_ratio", "flops_ratio_after_growth", "flops_ratio_total"):
            figures[f"{key}_{row['arm']}"] = row.get(key)
    for arm, row in gap_predictions.items():
        figures[f"gap_predicted_{arm}"] = row.get("predicted")
        figures[f"gap_measured_{arm}"] = row.get("measured")
    text = (f"Selected {n_selected} of {n_train_docs} training documents ({selection_method}); grew with "
            f"{grow_method} (max |Δlogit| {figures['preservation_max_abs_dlogit']:.2e}). {saving_summary}")
    return RunSummary(figures=figures, text=text)


def report(result: RunSummary) -> list:
    return [Markdown("## What this run measured\n\n" + result.text),
            Table(["figure", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                        for k, v in result.figures.items()], title="Figures")]
