"""The last step: what this run measured, as one table, one verdict per grown arm, and console text."""

from __future__ import annotations

import dataclasses
from typing import Any

from libs.report import Markdown, Table

__all__ = ["RunSummary", "run", "report", "console_text"]


@dataclasses.dataclass(frozen=True)
class RunSummary:
    figures: dict[str, Any]          # flat name -> number or string (the `summary` artifact)
    text: str                        # the run's story in a few sentences (the `summary_text` artifact)


def run(*, n_train_docs: int, n_selected: int, selection_method: str, grow_method: str, preservation: dict,
        verdict: dict, verdict_summary: str, large_final_val_loss: dict[str, float],
        large_tokens_per_s: dict[str, float], gap_predictions: dict[str, dict]) -> RunSummary:
    """Collect the run's headline figures into one flat dict.

    ``verdict`` is ``join_large``'s :func:`libs.growth_saving.assess_growth` dict. A grown arm
    contributes its verdict, and its step and FLOP ratios only where it was assessed (the
    capacity check passed): a run never reports a speedup that its own control contradicts.
    """
    figures: dict[str, Any] = {
        "n_train_docs": n_train_docs, "n_selected": n_selected,
        "selected_fraction": n_selected / max(n_train_docs, 1), "selection_method": selection_method,
        "grow_method": grow_method, "preservation_max_abs_dlogit": preservation.get("max_abs_dlogit"),
    }
    for arm, loss in large_final_val_loss.items():
        figures[f"final_val_loss_{arm}"] = loss
        figures[f"tokens_per_s_{arm}"] = large_tokens_per_s.get(arm)
    if verdict:
        cap = verdict["capacity_check"]
        figures["capacity_check_passed"] = cap["passed"]
        figures["capacity_margin_nats"] = cap["margin"]
        for arm, row in verdict["arms"].items():
            figures[f"verdict_{arm}"] = row["verdict"]
            if row["verdict"] in ("saving", "no saving"):
                for key in ("steps_to_target", "step_ratio", "flops_ratio_total", "flops_ratio_critical_path",
                            "null_gain_steps"):
                    figures[f"{key}_{arm}"] = row.get(key)
    for arm, row in gap_predictions.items():
        figures[f"gap_predicted_{arm}"] = row.get("predicted")
        figures[f"gap_measured_{arm}"] = row.get("measured")
    dlogit = figures["preservation_max_abs_dlogit"]
    text = (f"Selected {n_selected} of {n_train_docs} training documents ({selection_method}); grew with "
            f"{grow_method}" + (f" (max |Δlogit| at growth {dlogit:.2e})" if dlogit is not None else "")
            + f".\n{verdict_summary}")
    return RunSummary(figures=figures, text=text)


def console_text(result: RunSummary, *, flow_file: str, run_id: str) -> str:
    """What the end step prints: the verdict, the final losses, and how to open the cards."""
    losses = ", ".join(f"{k.removeprefix('final_val_loss_')} {v:.4f}" for k, v in result.figures.items()
                       if k.startswith("final_val_loss_"))
    return (f"\n=== GrowthFlow run {run_id} ===\n{result.text}\nFinal validation losses: {losses}.\n"
            f"Cards: python {flow_file} card server   (then open http://localhost:8324)\n"
            f"       python {flow_file} card get {run_id}/join_large verdict.html   (the verdict card)\n"
            f"Artifacts: Flow('GrowthFlow')['{run_id}']['end'].task.data.summary (Client API)\n")


def report(result: RunSummary) -> list:
    return [Markdown("## What this run measured\n\n" + result.text.replace("\n", "\n\n")),
            Table(["figure", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else v]
                                        for k, v in result.figures.items()], title="Figures")]
