"""Did growing pay? The verdict of one run, as pure functions on plain data.

Inputs are what the training stages already produce: loss curves (lists of evaluation
records ``{"step", "val_loss", ...}`` in step order, with an evaluation at step 0), FLOPs per
optimizer step of every arm, and the pretraining FLOPs of every small model.

The arms
--------
``scratch``  the large shape from a random init: the target. Its final validation loss is the
             loss every grown arm must reach.
``control``  the first small model, trained on from its final checkpoint for the FLOPs scratch
             spends minus what that small model already spent (equal total compute,
             :func:`control_arm_steps`).
grown arms   any other arm: the large shape initialised by a growth operator.

What is computed, per grown arm
-------------------------------
* steps to scratch's final validation loss (linear interpolation between evaluations), and
  FLOPs: after growth (``steps x flops_per_step``), in total (plus the pretraining of every
  small model the arm was grown from; by default every small model), and on the critical
  path (the small models trained in parallel: only the largest one charged, as Deep Fusion
  frames it); each as a ratio to scratch's steps / FLOPs (below 1 = fewer).
* the loss-matching null: a grown model starts at a lower loss than a random init. A scratch
  model that started at that loss would need ``S(target) - S(start)`` steps, with ``S`` the
  step at which scratch's own curve reaches a loss. ``null_gain_steps`` = that number minus
  the steps the grown arm needed; positive = an advantage that lasts beyond starting lower.
* the capacity check: the scratch large model must end below the control's validation loss
  at equal total FLOPs (read off the control's curve at that compute). Where it does not, the
  larger shape is not worth growing into at this budget and no speedup is stated.

The verdict of an arm: ``"saving"`` (it reached scratch's final loss in fewer total FLOPs,
every small model's pretraining charged), ``"no saving"``, ``"not assessed: capacity check
failed"``, or ``"not assessed: no control arm"``; with the numbers behind it and one sentence.
"""

from __future__ import annotations

import math

__all__ = ["SAVING", "NO_SAVING", "CAPACITY_FAILED", "NO_CONTROL", "steps_to_reach", "loss_at_step",
           "control_arm_steps", "capacity_check", "assess_growth", "saving_table"]

SAVING = "saving"
NO_SAVING = "no saving"
CAPACITY_FAILED = "not assessed: capacity check failed"
NO_CONTROL = "not assessed: no control arm"


def _check_curve(curve: list[dict], name: str) -> None:
    if not curve:
        raise ValueError(f"the {name} curve is empty: the arm recorded no evaluation")
    steps = [r["step"] for r in curve]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"the {name} curve's steps must increase strictly, got {steps[:8]}...")
    for r in curve:
        if not math.isfinite(float(r["val_loss"])):
            raise ValueError(f"the {name} curve has a non-finite val_loss at step {r['step']}")


def steps_to_reach(curve: list[dict], target_loss: float) -> float | None:
    """First (linearly interpolated) step at which ``curve``'s validation loss reaches ``target_loss``.

    ``curve``: evaluation records (``step``, ``val_loss``) in step order. None if never reached;
    the first record's step if it already starts at or below the target.
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


def loss_at_step(curve: list[dict], step: float) -> float:
    """Validation loss at ``step``, linearly interpolated; the last record's loss beyond the curve."""
    if step <= curve[0]["step"]:
        return float(curve[0]["val_loss"])
    for a, b in zip(curve, curve[1:]):
        if step <= b["step"]:
            frac = (step - a["step"]) / (b["step"] - a["step"])
            return float(a["val_loss"] + frac * (b["val_loss"] - a["val_loss"]))
    return float(curve[-1]["val_loss"])


def control_arm_steps(*, scratch_steps: int, scratch_flops_per_step: float, small_flops_per_step: float,
                      small_pretrain_flops: float) -> int:
    """Steps of the control arm for equal total compute with the scratch large model.

    The control continues the small model that already spent ``small_pretrain_flops``; it gets
    the rest of scratch's ``scratch_steps x scratch_flops_per_step``, in steps of
    ``small_flops_per_step`` (rounded to the nearest step, so its total is within half a step).
    """
    for name, value in (("scratch_flops_per_step", scratch_flops_per_step),
                        ("small_flops_per_step", small_flops_per_step)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if scratch_steps < 1:
        raise ValueError(f"scratch_steps must be at least 1, got {scratch_steps!r}")
    if not (small_pretrain_flops >= 0 and math.isfinite(small_pretrain_flops)):
        raise ValueError(f"small_pretrain_flops must be a finite number >= 0, got {small_pretrain_flops!r}")
    remaining = scratch_steps * scratch_flops_per_step - small_pretrain_flops
    if remaining < small_flops_per_step:
        raise ValueError(f"the small model's pretraining ({small_pretrain_flops:.3g} FLOPs) already uses up the "
                         f"scratch arm's whole budget ({scratch_steps * scratch_flops_per_step:.3g} FLOPs): the "
                         "control would train no step. Train the large arms longer or the small models shorter.")
    return int(round(remaining / small_flops_per_step))


def capacity_check(scratch_curve: list[dict], scratch_flops_per_step: float, control_curve: list[dict] | None,
                   control_flops_per_step: float | None, control_pretrain_flops: float = 0.0) -> dict:
    """Does the scratch large model beat the small model trained on for equal total FLOPs?

    The control's loss is read off its curve at the step where its total compute
    (``control_pretrain_flops`` + steps x ``control_flops_per_step``) equals scratch's; if its
    curve ends before that, its final loss is used and ``control_short_of_equal_flops`` is set.

    Returns a dict: ``passed`` (True/False; None without a control), ``scratch_final_val_loss``,
    ``control_val_loss_at_equal_flops``, ``control_final_val_loss``, ``control_step_at_equal_flops``,
    ``equal_total_flops``, ``margin`` (control - scratch; > 0 = scratch better), ``sentence``.
    """
    _check_curve(scratch_curve, "scratch")
    scratch_final = float(scratch_curve[-1]["val_loss"])
    total = float(scratch_curve[-1]["step"]) * scratch_flops_per_step
    out = {"passed": None, "scratch_final_val_loss": scratch_final, "equal_total_flops": total,
           "control_val_loss_at_equal_flops": None, "control_final_val_loss": None,
           "control_step_at_equal_flops": None, "control_short_of_equal_flops": None, "margin": None}
    if not control_curve:
        out["sentence"] = ("capacity not checked: no control arm was trained (add 'control' to train_large.arms), "
                           "so no saving can be claimed")
        return out
    _check_curve(control_curve, "control")
    if not (control_flops_per_step and control_flops_per_step > 0):
        raise ValueError(f"control_flops_per_step must be positive, got {control_flops_per_step!r}")
    at_step = (total - control_pretrain_flops) / control_flops_per_step
    control_loss = loss_at_step(control_curve, at_step)
    short = at_step > control_curve[-1]["step"] + 1          # more than a step of compute missing
    margin = control_loss - scratch_final
    out.update(passed=bool(scratch_final < control_loss), control_val_loss_at_equal_flops=control_loss,
               control_final_val_loss=float(control_curve[-1]["val_loss"]), control_step_at_equal_flops=at_step,
               control_short_of_equal_flops=bool(short), margin=margin)
    if out["passed"]:
        out["sentence"] = (f"capacity check passed: at equal total FLOPs the scratch large model ({scratch_final:.4f}) "
                           f"beats the small model trained on ({control_loss:.4f}) by {margin:.3f} nats")
    else:
        out["sentence"] = (f"capacity check failed: at equal total FLOPs the small model trained on "
                           f"({control_loss:.4f}) is at least as good as the scratch large model ({scratch_final:.4f}), "
                           "so the larger shape is not worth growing into at this budget")
    if short:
        out["sentence"] += " (the control's curve ends before equal FLOPs; its final loss was used)"
    return out


def _null_steps(scratch_curve: list[dict], start_loss: float, target_loss: float) -> float:
    """Steps a scratch model needs from ``start_loss`` to ``target_loss``, read off scratch's own curve."""
    s_target = steps_to_reach(scratch_curve, target_loss)
    s_start = steps_to_reach(scratch_curve, start_loss)
    if s_target is None:             # cannot happen when target is scratch's final loss; kept for safety
        s_target = float(scratch_curve[-1]["step"])
    if s_start is None or s_start > s_target:
        s_start = s_target           # the grown model starts at or below the target: a scratch model needs 0
    return s_target - s_start


def assess_growth(curves: dict[str, list[dict]], flops_per_step: dict[str, float],
                  small_pretrain_flops: dict[str, float], *, components: dict[str, list[str]] | None = None,
                  control_small_model: str | None = None, scratch_arm: str = "scratch",
                  control_arm: str = "control") -> dict:
    """The verdict of every grown arm against scratch, behind a capacity check against the control.

    Parameters
    ----------
    curves : arm -> evaluation records (``step``, ``val_loss``), with an evaluation at step 0 for
        every grown arm (its starting loss feeds the loss-matching null). Must hold ``scratch_arm``;
        ``control_arm`` is optional (without it no arm is assessed). Every other arm is a grown arm.
    flops_per_step : arm -> training FLOPs per optimizer step (the control's are small-model steps).
    small_pretrain_flops : small model name -> its pretraining FLOPs.
    components : grown arm -> the small models it was grown from (default: every small model).
        Their pretraining is charged to the arm: all of it in ``flops_total``, the largest one in
        ``flops_critical_path``.
    control_small_model : the small model the control continues (default: the first one); its
        pretraining counts in the control's total compute.

    Returns
    -------
    dict with ``target_arm``, ``target_loss`` (scratch's final validation loss), ``scratch_steps``,
    ``scratch_flops``, ``capacity_check`` (see :func:`capacity_check`), ``arms`` (grown arm -> dict
    with ``verdict``, ``sentence``, ``final_val_loss``, ``start_val_loss``, ``reached``,
    ``steps_to_target``, ``step_ratio``, ``flops_after_growth``, ``flops_total``,
    ``flops_critical_path``, ``flops_ratio_after_growth``, ``flops_ratio_total``,
    ``flops_ratio_critical_path``, ``null_steps``, ``null_gain_steps``, ``null_gain_fraction``; the
    step and FLOP figures are None unless assessed, and ``measured_not_claimed`` keeps them for
    inspection when the capacity check failed), and ``summary`` (every sentence, one per line).
    """
    if scratch_arm not in curves:
        raise ValueError(f"the scratch arm {scratch_arm!r} is not among the arms {sorted(curves)}; the verdict "
                         "needs a scratch large model (add 'scratch' to train_large.arms)")
    for arm in curves:
        _check_curve(curves[arm], arm)
        if arm not in flops_per_step:
            raise ValueError(f"no flops_per_step for arm {arm!r}")
    names = list(small_pretrain_flops)
    control_small = control_small_model or (names[0] if names else None)
    scratch = curves[scratch_arm]
    target = float(scratch[-1]["val_loss"])
    scratch_steps = float(scratch[-1]["step"])
    scratch_flops = scratch_steps * flops_per_step[scratch_arm]
    has_control = control_arm in curves
    capacity = capacity_check(scratch, flops_per_step[scratch_arm], curves.get(control_arm),
                              flops_per_step.get(control_arm),
                              small_pretrain_flops.get(control_small, 0.0) if has_control else 0.0)
    arms = {}
    for arm, curve in curves.items():
        if arm in (scratch_arm, control_arm):
            continue
        if curve[0]["step"] != 0:
            raise ValueError(f"arm {arm!r}'s curve starts at step {curve[0]['step']}, not 0: the loss-matching "
                             "null needs the grown model's loss before training (train_model evaluates at step 0 "
                             "unless it resumed from a checkpoint that lacks it)")
        mine = names if components is None else components.get(arm, names)
        unknown = [n for n in mine if n not in small_pretrain_flops]
        if unknown:
            raise ValueError(f"arm {arm!r} names small models {unknown} without pretraining FLOPs; "
                             f"known: {names}")
        pre_total = sum(small_pretrain_flops[n] for n in mine)
        pre_critical = max((small_pretrain_flops[n] for n in mine), default=0.0)
        start = float(curve[0]["val_loss"])
        steps = steps_to_reach(curve, target)
        figures = {"steps_to_target": steps, "step_ratio": None, "flops_after_growth": None, "flops_total": None,
                   "flops_critical_path": None, "flops_ratio_after_growth": None, "flops_ratio_total": None,
                   "flops_ratio_critical_path": None, "null_steps": None, "null_gain_steps": None,
                   "null_gain_fraction": None}
        null = _null_steps(scratch, start, target)
        figures["null_steps"] = null
        if steps is not None:
            after = steps * flops_per_step[arm]
            figures.update(step_ratio=steps / scratch_steps, flops_after_growth=after, flops_total=after + pre_total,
                           flops_critical_path=after + pre_critical,
                           flops_ratio_after_growth=after / scratch_flops,
                           flops_ratio_total=(after + pre_total) / scratch_flops,
                           flops_ratio_critical_path=(after + pre_critical) / scratch_flops,
                           null_gain_steps=null - steps, null_gain_fraction=(null - steps) / scratch_steps)
        row = {"final_val_loss": float(curve[-1]["val_loss"]), "start_val_loss": start, "reached": steps is not None,
               "components": list(mine), "pretrain_flops_total": pre_total, "pretrain_flops_critical_path": pre_critical}
        if capacity["passed"] is not True:
            verdict = CAPACITY_FAILED if capacity["passed"] is False else NO_CONTROL
            row.update({k: None for k in figures}, verdict=verdict, measured_not_claimed=figures,
                       sentence=_unassessed_sentence(arm, row, target, capacity))
        else:
            verdict = SAVING if steps is not None and figures["flops_ratio_total"] < 1.0 else NO_SAVING
            row.update(figures, verdict=verdict)
            row["sentence"] = _assessed_sentence(arm, row, target, scratch_steps)
        arms[arm] = row
    summary = [capacity["sentence"][0].upper() + capacity["sentence"][1:] + "."]
    summary += [row["sentence"] for row in arms.values()]
    return {"target_arm": scratch_arm, "target_loss": target, "scratch_steps": scratch_steps,
            "scratch_flops": scratch_flops, "capacity_check": capacity, "arms": arms, "summary": "\n".join(summary)}


def _unassessed_sentence(arm: str, row: dict, target: float, capacity: dict) -> str:
    why = ("the capacity check failed (the small model trained on for equal total FLOPs is at least as good as "
           "the scratch large model)" if capacity["passed"] is False else "no control arm was trained, so the "
           "capacity check could not be made")
    return (f"`{arm}`: not assessed: {why}; final validation loss {row['final_val_loss']:.4f} "
            f"(scratch {target:.4f}); no speedup is stated.")


def _assessed_sentence(arm: str, row: dict, target: float, scratch_steps: float) -> str:
    if not row["reached"]:
        return (f"`{arm}`: no saving: it never reached scratch's final validation loss {target:.4f} "
                f"(its own final: {row['final_val_loss']:.4f}).")
    gain = row["null_gain_steps"]
    null_text = (f"{gain:+.0f} steps against the loss-matching null "
                 + ("(a lasting advantage beyond starting lower)" if gain > 0 else "(no advantage beyond starting lower)"))
    return (f"`{arm}`: {row['verdict']}: reached scratch's final validation loss {target:.4f} in "
            f"{row['steps_to_target']:.0f} of {scratch_steps:.0f} steps ({row['step_ratio']:.2f}x), "
            f"{row['flops_ratio_total']:.2f}x scratch's FLOPs in total with the small models' pretraining "
            f"({row['flops_ratio_critical_path']:.2f}x on the critical path, {row['flops_ratio_after_growth']:.2f}x "
            f"after growth); {null_text}.")


def saving_table(curves: dict[str, list[dict]], flops_per_step: dict[str, float], pre_flops: dict[str, float],
                 target_arm: str = "scratch") -> list[dict]:
    """One row per arm: steps and FLOPs to reach ``target_arm``'s final validation loss, and ratios.

    Raw figures without the capacity check: use :func:`assess_growth` for a verdict. FLOPs are
    counted after growth only (``steps x flops_per_step``) and in total (plus the arm's
    ``pre_flops``). Ratios are against the target arm's own steps and FLOPs (below 1 = fewer).
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
