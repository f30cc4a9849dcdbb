"""Stage 4b: compare the large-model arms: what did growing save?

For each arm, the steps (and FLOPs) it needed to reach the scratch model's final
validation loss; FLOPs are counted after growth only, and in total with the small
models' pretraining, so that a saving that only moves compute into pretraining
shows as none.
"""

from __future__ import annotations

import dataclasses

from libs.growth_saving import saving_table
from libs.report import Figure, Markdown, Table

__all__ = ["JoinLargeResult", "run", "report"]


@dataclasses.dataclass(frozen=True)
class JoinLargeResult:
    saving: list[dict]
    final_val_loss: dict[str, float]
    curves: dict[str, list[dict]]
    summary: str


def run(*, curves: dict[str, list[dict]], flops_per_step: dict[str, float],
        small_pretrain_flops: float) -> JoinLargeResult:
    """Saving table of every arm against ``scratch`` (grown arms are charged ``small_pretrain_flops``)."""
    pre = {arm: (small_pretrain_flops if arm != "scratch" else 0.0) for arm in curves}
    target = "scratch" if "scratch" in curves else next(iter(curves))
    rows = saving_table(curves, flops_per_step, pre, target_arm=target)
    finals = {arm: float(c[-1]["val_loss"]) for arm, c in curves.items()}
    lines = []
    for row in rows:
        if row["arm"] == target:
            continue
        if row.get("steps_to_target") is None:
            lines.append(f"`{row['arm']}` never reached {target}'s final validation loss "
                         f"{finals[target]:.4f} (its own final: {finals[row['arm']]:.4f}).")
        else:
            lines.append(f"`{row['arm']}` reached {target}'s final validation loss {finals[target]:.4f} in "
                         f"{row['steps_to_target']} steps: {row['step_ratio']:.2f}x the steps, "
                         f"{row['flops_ratio_after_growth']:.2f}x the FLOPs after growth, "
                         f"{row['flops_ratio_total']:.2f}x counting the small models' pretraining.")
    return JoinLargeResult(saving=rows, final_val_loss=finals, curves=curves,
                           summary=" ".join(lines) or "Only one arm was trained: nothing to compare.")


def report(result: JoinLargeResult) -> list:
    from steps.train_large import loss_curve_figure

    keys = [k for k in result.saving[0]] if result.saving else []
    return [
        Markdown("## Grown vs scratch\n\n" + result.summary),
        Table(keys, [[_fmt(r[k]) for k in keys] for r in result.saving], title="Saving"),
        Figure(loss_curve_figure(result.curves, "Large model: grown vs scratch"), title="Loss curves"),
    ]


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else value
