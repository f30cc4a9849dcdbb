"""Stage 4b: did growing pay? The verdict of every grown arm, beside its controls.

For each grown arm: steps and FLOPs to the scratch model's final validation loss (after
growth, in total with every small model's pretraining charged, and on the critical path with
the small models trained in parallel), the gain over the loss-matching null (a grown model
starts lower; does it keep an advantage?), and the capacity check (scratch must beat the small
model trained on for equal total FLOPs). The verdict is ``saving``, ``no saving`` or ``not
assessed`` (capacity check failed, or no control arm), and no speedup is stated where the
capacity check failed. The arithmetic is :func:`libs.growth_saving.assess_growth`.
"""

from __future__ import annotations

import dataclasses

from libs.growth_saving import assess_growth
from libs.report import Figure, Markdown, Table

__all__ = ["JoinLargeResult", "run", "report"]

_COLUMNS = [("verdict", "verdict"), ("final_val_loss", "final val loss"), ("start_val_loss", "loss at step 0"),
            ("steps_to_target", "steps to scratch's final loss"), ("step_ratio", "step ratio"),
            ("flops_ratio_after_growth", "FLOPs ratio after growth"), ("flops_ratio_total", "FLOPs ratio, total"),
            ("flops_ratio_critical_path", "FLOPs ratio, critical path"), ("null_steps", "null: scratch steps from "
                                                                            "the grown start"),
            ("null_gain_steps", "gain over the null (steps)")]


@dataclasses.dataclass(frozen=True)
class JoinLargeResult:
    verdict: dict                     # libs.growth_saving.assess_growth's dict (plain data)
    final_val_loss: dict[str, float]  # arm -> final validation loss
    curves: dict[str, list[dict]]
    summary: str                      # one sentence per line: the capacity check, then every grown arm


def run(*, curves: dict[str, list[dict]], flops_per_step: dict[str, float], small_pretrain_flops: dict[str, float],
        components: dict[str, list[str]] | None = None, control_small_model: str | None = None) -> JoinLargeResult:
    """The verdict of the grown arms against ``scratch``, behind the capacity check against ``control``.

    ``curves``/``flops_per_step`` are per arm; ``small_pretrain_flops`` per small model;
    ``components`` names, per grown arm, the small models it was grown from (their pretraining is
    charged to it); ``control_small_model`` is the small model the control arm continued.
    """
    if "scratch" not in curves:
        finals = {arm: float(c[-1]["val_loss"]) for arm, c in curves.items()}
        return JoinLargeResult(verdict={}, final_val_loss=finals, curves=curves,
                               summary="No scratch arm was trained (train_large.arms): there is no baseline, so "
                                       "no saving is assessed.")
    verdict = assess_growth(curves, flops_per_step, small_pretrain_flops, components=components,
                            control_small_model=control_small_model)
    return JoinLargeResult(verdict=verdict, final_val_loss={arm: float(c[-1]["val_loss"]) for arm, c in curves.items()},
                           curves=curves, summary=verdict["summary"])


def report(result: JoinLargeResult) -> list:
    from steps.train_large import loss_curve_figure

    items = [Markdown("## Did growing pay?\n\n" + result.summary.replace("\n", "\n\n"))]
    if result.verdict:
        cap = result.verdict["capacity_check"]
        items.append(Table(["scratch final val loss", "control val loss at equal total FLOPs", "margin (nats)",
                            "passed"],
                           [[_fmt(cap["scratch_final_val_loss"]), _fmt(cap["control_val_loss_at_equal_flops"]),
                             _fmt(cap["margin"]), _fmt(cap["passed"])]], title="Capacity check"))
        rows = []
        for arm, row in result.verdict["arms"].items():
            figures = row if row["verdict"] in ("saving", "no saving") else {**row, **row["measured_not_claimed"]}
            cells = [arm] + [_fmt(figures.get(key)) for key, _ in _COLUMNS]
            if row["verdict"] not in ("saving", "no saving"):
                cells[1] = f"{row['verdict']} (figures measured, not claimed)"
            rows.append(cells)
        items.append(Table(["arm"] + [title for _, title in _COLUMNS], rows, title="Grown arms against scratch"))
    items.append(Figure(loss_curve_figure(result.curves, "Large model: every arm"), title="Loss curves"))
    return items


def _fmt(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else value
