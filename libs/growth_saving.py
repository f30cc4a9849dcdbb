"""What growth saved: steps and FLOPs for each arm to reach a target arm's final validation loss."""

from __future__ import annotations

import math

__all__ = ["steps_to_reach", "saving_table"]


def steps_to_reach(curve: list[dict], target_loss: float) -> float | None:
    """First (linearly interpolated) step at which ``curve``'s validation loss reaches ``target_loss``.

    ``curve`` is a list of evaluation records (``step``, ``val_loss``) in step order; None if never.
    """
    prev = None
    for rec in curve:
        if rec["val_loss"] <= target_loss:
            if prev is None or prev["val_loss"] == rec["val_loss"]:
                return float(rec["step"])
            frac = (prev["val_loss"] - target_loss) / (prev["val_loss"] - rec["val_loss"])
            return prev["step"] + frac * (rec["step"] - prev["step"])
        prev = rec
    return None


def saving_table(curves: dict[str, list[dict]], flops_per_step: dict[str, float], pre_flops: dict[str, float],
                 target_arm: str = "scratch") -> list[dict]:
    """One row per arm: steps and FLOPs to reach ``target_arm``'s final validation loss, and ratios.

    FLOPs are counted after growth only (``steps x flops_per_step``) and in total (plus the arm's
    ``pre_flops``, e.g. the small models' pretraining). Ratios are against the target arm's own
    steps and FLOPs to its final loss (its last step; it has no pretraining of its own unless
    ``pre_flops`` says so). A ratio below 1 is a saving.
    """
    if target_arm not in curves:
        raise ValueError(f"target arm {target_arm!r} is not among the arms {sorted(curves)}")
    target_curve = curves[target_arm]
    target_loss = float(target_curve[-1]["val_loss"])
    target_steps = float(target_curve[-1]["step"])
    target_flops = target_steps * flops_per_step[target_arm]
    target_total = target_flops + pre_flops.get(target_arm, 0.0)
    rows = []
    for arm, curve in curves.items():
        steps = steps_to_reach(curve, target_loss) if arm != target_arm else target_steps
        row = {"arm": arm, "final_val_loss": float(curve[-1]["val_loss"]), "target_loss": target_loss,
               "steps_to_target": None if steps is None else round(steps, 1), "step_ratio": None,
               "flops_after_growth": None, "flops_total": None, "flops_ratio_after_growth": None,
               "flops_ratio_total": None}
        if steps is not None:
            after = steps * flops_per_step[arm]
            total = after + pre_flops.get(arm, 0.0)
            row.update(step_ratio=steps / target_steps if target_steps else math.nan, flops_after_growth=after,
                       flops_total=total, flops_ratio_after_growth=after / target_flops if target_flops else math.nan,
                       flops_ratio_total=total / target_total if target_total else math.nan)
        rows.append(row)
    return rows
