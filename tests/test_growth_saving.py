"""The verdict of a run on synthetic curves: capacity check, ratios, loss-matching null, control steps."""
import math

import pytest

from libs.growth_saving import (CAPACITY_FAILED, NO_CONTROL, NO_SAVING, SAVING, assess_growth, capacity_check,
                                control_arm_steps, loss_at_step, steps_to_reach)


def _curve(f, steps, every=100):
    return [{"step": s, "val_loss": f(s)} for s in range(0, steps + 1, every)]


def scratch_loss(s):           # from 6.0 at init down to 3.0 at step 1000
    return 3.0 + 3.0 * (1 - s / 1000) ** 2


SMALL_PRE = {"small_a": 10.0, "small_b": 30.0}     # FLOPs; scratch spends 1000 x 1.0 = 1000
FLOPS = {"scratch": 1.0, "grown": 1.0, "control": 0.25}


def _passing_control(s):       # the control ends above scratch's final loss
    return 3.4 - 0.2 * s / 3960


def test_steps_and_loss_interpolate_between_evaluations():
    curve = [{"step": 0, "val_loss": 5.0}, {"step": 10, "val_loss": 4.0}, {"step": 20, "val_loss": 3.0}]
    assert steps_to_reach(curve, 3.5) == pytest.approx(15.0)
    assert steps_to_reach(curve, 6.0) == 0.0
    assert steps_to_reach(curve, 2.0) is None
    assert loss_at_step(curve, 5) == pytest.approx(4.5)
    assert loss_at_step(curve, 50) == 3.0


def test_capacity_fails_then_no_speedup_is_stated():
    grown = _curve(lambda s: 4.0 - 1.2 * s / 1000, 1000)          # reaches 3.0 at ~833 steps
    control = _curve(lambda s: 3.5 - 0.6 * s / 3960, 3960)        # ends at 2.9 < 3.0: the small model wins
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": grown, "control": control}, FLOPS,
                        SMALL_PRE)
    assert out["capacity_check"]["passed"] is False
    row = out["arms"]["grown"]
    assert row["verdict"] == CAPACITY_FAILED
    assert row["step_ratio"] is None and row["flops_ratio_total"] is None and row["null_gain_steps"] is None
    assert row["measured_not_claimed"]["step_ratio"] == pytest.approx(0.833, abs=1e-3)   # kept, not claimed
    for text in (row["sentence"], out["summary"]):
        assert "0.83" not in text and "x scratch" not in text and "steps (" not in text
    assert "capacity check failed" in out["summary"] and "no speedup is stated" in row["sentence"]


def test_capacity_passes_then_ratios_and_null_gain():
    # the grown arm starts at 4.0 (scratch is there at step ~423) and reaches 3.0 at step 400
    grown = _curve(lambda s: max(4.0 - s / 400, 2.5), 1000)
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": grown,
                         "control": _curve(_passing_control, 3960)}, FLOPS, SMALL_PRE)
    cap = out["capacity_check"]
    assert cap["passed"] is True and cap["margin"] > 0
    # control total compute at equal FLOPs: 10 (its pretraining) + 3960 x 0.25 = 1000 = scratch's
    assert cap["control_step_at_equal_flops"] == pytest.approx(3960)
    row = out["arms"]["grown"]
    assert row["steps_to_target"] == pytest.approx(400)
    assert row["step_ratio"] == pytest.approx(0.4)
    assert row["flops_ratio_after_growth"] == pytest.approx(0.4)
    assert row["flops_ratio_total"] == pytest.approx((400 + 40) / 1000)           # both small models charged
    assert row["flops_ratio_critical_path"] == pytest.approx((400 + 30) / 1000)   # the larger one only
    s_start = 1000 * (1 - math.sqrt(1 / 3))      # scratch reaches 4.0 here (between evaluations: interpolated)
    null = 1000 - steps_to_reach(_curve(scratch_loss, 1000), 4.0)
    assert abs(1000 - s_start - null) < 10
    assert row["null_steps"] == pytest.approx(null)
    assert row["null_gain_steps"] == pytest.approx(null - 400) and row["null_gain_steps"] > 0
    assert row["verdict"] == SAVING
    assert "0.40x" in row["sentence"] and "0.44x" in row["sentence"] and "loss-matching null" in row["sentence"]


def test_starting_lower_without_a_lasting_advantage_gives_no_null_gain():
    # a grown model that is scratch's curve shifted by 300 steps: it only starts lower
    shifted = _curve(lambda s: scratch_loss(min(s + 300, 1000)) if s + 300 <= 1000 else 3.0 - 1e-3 * (s - 700), 1000)
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": shifted,
                         "control": _curve(_passing_control, 3960)}, FLOPS, SMALL_PRE)
    row = out["arms"]["grown"]
    assert row["steps_to_target"] == pytest.approx(700)
    assert abs(row["null_gain_steps"]) < 1e-6
    assert "no advantage beyond starting lower" in row["sentence"]


def test_never_reaching_or_costing_more_is_no_saving():
    slow = _curve(lambda s: 6.0 - 2.5 * s / 1000, 1000)           # ends at 3.5 > 3.0
    late = _curve(lambda s: max(4.0 - s / 980, 2.9), 1000)        # reaches 3.0 at 980 + 40 pretraining > 1000
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "slow": slow, "late": late,
                         "control": _curve(_passing_control, 3960)},
                        FLOPS | {"slow": 1.0, "late": 1.0}, SMALL_PRE)
    assert out["arms"]["slow"]["verdict"] == NO_SAVING and out["arms"]["slow"]["step_ratio"] is None
    assert "never reached" in out["arms"]["slow"]["sentence"]
    assert out["arms"]["late"]["verdict"] == NO_SAVING
    assert out["arms"]["late"]["flops_ratio_total"] == pytest.approx(1.02)


def test_components_limit_what_an_arm_is_charged():
    grown = _curve(lambda s: max(4.0 - s / 400, 2.5), 1000)
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": grown,
                         "control": _curve(_passing_control, 3960)}, FLOPS, SMALL_PRE,
                        components={"grown": ["small_a"]})
    assert out["arms"]["grown"]["flops_ratio_total"] == pytest.approx(0.41)


def test_without_a_control_nothing_is_assessed():
    grown = _curve(lambda s: max(4.0 - s / 400, 2.5), 1000)
    out = assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": grown}, FLOPS, SMALL_PRE)
    assert out["capacity_check"]["passed"] is None
    assert out["arms"]["grown"]["verdict"] == NO_CONTROL and out["arms"]["grown"]["step_ratio"] is None


def test_a_grown_curve_needs_its_step_zero_evaluation():
    grown = _curve(lambda s: max(4.0 - s / 400, 2.5), 1000)[1:]
    with pytest.raises(ValueError, match="step 0"):
        assess_growth({"scratch": _curve(scratch_loss, 1000), "grown": grown}, FLOPS, SMALL_PRE)
    with pytest.raises(ValueError, match="scratch arm"):
        assess_growth({"grown": _curve(scratch_loss, 1000)}, FLOPS, SMALL_PRE)


@pytest.mark.parametrize("scratch_steps,large,small,pre", [(1000, 1.0, 0.25, 10.0), (1200, 3.7e9, 1.21e9, 5.5e11),
                                                           (7, 5.0, 0.3, 0.0)])
def test_control_flops_equal_scratch_total_minus_the_small_models_own(scratch_steps, large, small, pre):
    n = control_arm_steps(scratch_steps=scratch_steps, scratch_flops_per_step=large, small_flops_per_step=small,
                          small_pretrain_flops=pre)
    assert abs(n * small - (scratch_steps * large - pre)) <= small       # within one step
    assert n * small + pre == pytest.approx(scratch_steps * large, abs=small)


def test_control_without_budget_left_is_refused():
    with pytest.raises(ValueError, match="uses up"):
        control_arm_steps(scratch_steps=10, scratch_flops_per_step=1.0, small_flops_per_step=1.0,
                          small_pretrain_flops=20.0)


def test_capacity_check_reads_the_control_at_equal_compute_not_at_its_end():
    scratch = _curve(scratch_loss, 1000)                            # total 1000 FLOPs, final 3.0
    control = _curve(lambda s: 3.2 - 0.4 * s / 8000, 8000)          # at 3960 steps: 3.002; at its end: 2.8
    cap = capacity_check(scratch, 1.0, control, 0.25, 10.0)
    assert cap["passed"] is True and cap["control_val_loss_at_equal_flops"] == pytest.approx(3.2 - 0.4 * 3960 / 8000)
    short = capacity_check(scratch, 1.0, _curve(_passing_control, 2000), 0.25, 10.0)
    assert short["control_short_of_equal_flops"] is True and "ends before equal FLOPs" in short["sentence"]
