"""The LM zoo (flows/lm_zoo_flow.py) and what predict_gap takes from other runs.

Unit tests: fingerprints, the earlier-run filter and de-duplication (a duplicated run must not
change the leave-one-model-out R²), the extrapolation flag, recovery of a known relation, the
permutation check, the configs. End to end: two tiny LMZooFlow runs through the Runner, found
again through the Client API by fingerprint (flows/zoo_client.py).
"""

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from libs.fingerprint import data_fingerprint, settings_fingerprint
from libs.gap_predictors import extrapolation_reasons, feature_matrix, fit_gap_predictors, predict_with_interval
from libs.schema import load_toml
from steps.fit_zoo import permutation_r2
from steps.predict_gap import GapConfig, dedup_rows, run as predict_gap, select_earlier_runs

ROOT = Path(__file__).resolve().parent.parent


def _zoo(n_models=10, n_ckpt=6, seed=0, noise=0.02, source="zoo"):
    """Synthetic zoo: gap = 0.3 * a - 0.2 * b + 0.1 (+ noise), every model its own a/b offsets."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        offset = rng.normal(size=2)
        for step in range(n_ckpt):
            a, b = offset + rng.normal(scale=0.5, size=2)
            gap = 0.3 * a - 0.2 * b + 0.1 + noise * rng.normal()
            rows.append({"features": {"a": float(a), "b": float(b), "c": float(rng.normal())}, "gap": float(gap),
                         "model": f"m{m}", "key": f"cfg:{seed}:m{m}", "source": source, "step": step})
    return rows


def _target(a, b, gap=None):
    gap = 0.3 * a - 0.2 * b + 0.1 if gap is None else gap
    return {"features": {"a": a, "b": b, "c": 0.0}, "gap": gap, "train_loss": 3.0, "val_loss": 3.0 + gap}


# ------------------------------------------------------------------------------------------ fingerprints

def test_data_fingerprint_follows_every_array_and_the_tokenizer():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 50, (6, 9)).astype(np.int32), np.full(6, 9, np.int32),
              rng.integers(0, 50, (3, 9)).astype(np.int32), np.full(3, 9, np.int32)]
    base = data_fingerprint('{"tok": 1}', *arrays)
    assert base == data_fingerprint('{"tok": 1}', *[a.copy() for a in arrays])
    assert base != data_fingerprint('{"tok": 2}', *arrays)
    for i in range(4):
        changed = [a.copy() for a in arrays]
        changed[i].flat[0] += 1
        assert data_fingerprint('{"tok": 1}', *changed) != base, i
    assert settings_fingerprint({"a": 1, "b": [1, 2]}) == settings_fingerprint({"b": [1, 2], "a": 1})
    with pytest.raises(ValueError, match="tokenizer JSON"):
        data_fingerprint("", *arrays)


# ------------------------------------------------------------------------------- earlier runs and duplicates

def test_select_earlier_runs_keeps_only_finished_matching_runs_that_ended_before_this_one():
    now = datetime(2026, 1, 1, 12)
    base = {"successful": True, "created_at": now - timedelta(hours=2), "finished_at": now - timedelta(hours=1),
            "data_fingerprint": "D", "measurement_fingerprint": "M"}
    candidates = [
        dict(base, run_id="concurrent", finished_at=now + timedelta(minutes=5)),      # started before, ended after
        dict(base, run_id="later", created_at=now + timedelta(minutes=1), finished_at=now + timedelta(minutes=9)),
        dict(base, run_id="running", successful=False, finished_at=None),
        dict(base, run_id="other_corpus", data_fingerprint="X"),
        dict(base, run_id="other_recipe", measurement_fingerprint="X"),
        dict(base, run_id="this"),
        dict(base, run_id="good1"),
        dict(base, run_id="good2"),
        dict(base, run_id="good3"),
    ]
    kept, excluded = select_earlier_runs(candidates, this_run_id="this", this_created_at=now, data_fingerprint="D",
                                         measurement_fingerprint="M", max_runs=2)
    assert [c["run_id"] for c in kept] == ["good1", "good2"]
    reasons = {e["run_id"]: e["reason"] for e in excluded}
    assert set(reasons) == {"concurrent", "later", "running", "other_corpus", "other_recipe", "good3"}
    assert "after this run started" in reasons["concurrent"] and "after this run started" in reasons["later"]
    assert "data fingerprint" in reasons["other_corpus"] and "measurement" in reasons["other_recipe"]


def test_a_duplicated_earlier_run_does_not_change_the_leave_one_model_out_r2():
    zoo = _zoo(n_models=9)
    own = _zoo(n_models=2, seed=5, source="this")
    targets = {"grown": _target(0.5, 0.2)}
    once = predict_gap(GapConfig(predictors=("linear", "gbm")), zoo_rows=zoo + own, targets=targets, seed=0)
    rerun = [dict(r, source="rerun") for r in own]               # an identical rerun (same config, seed, model)
    copies = [dict(r, source="copy") for r in zoo]               # the zoo read twice
    twice = predict_gap(GapConfig(predictors=("linear", "gbm")), zoo_rows=zoo + own + rerun + copies,
                        targets=targets, seed=0)
    assert twice.n_duplicate_rows == len(rerun) + len(copies)
    assert twice.n_zoo_rows == once.n_zoo_rows and twice.n_zoo_models == once.n_zoo_models == 11
    assert [r["loo_model_r2"] for r in twice.r2_table] == [r["loo_model_r2"] for r in once.r2_table]
    assert twice.predictions["grown"]["predicted"] == once.predictions["grown"]["predicted"]
    # without de-duplication the copies would sit in other groups: a held-out model's twin leaks into its fit
    rows, dropped = dedup_rows(zoo + copies)
    assert dropped == len(copies) and all(r["source"] == "zoo" for r in rows)


# ------------------------------------------------------------------------------------ predictions and verdicts

def test_a_predictor_fitted_on_a_zoo_with_a_known_relation_recovers_it():
    zoo = [dict(r, group=r["key"]) for r in _zoo(n_models=12, noise=0.01)]
    fit = fit_gap_predictors(zoo, ("linear", "gbm"), min_models=8)
    assert fit.best == "linear"
    table = {r["predictor"]: r for r in fit.table}
    assert table["linear"]["loo_model_r2"] > 0.98 and table["linear"]["kendall_tau"] > 0.9
    ridge = fit.fitted["linear"]
    scaler, model = ridge[0], ridge[-1]
    coef = dict(zip(fit.names, model.coef_ / scaler.scale_))
    assert coef["a"] == pytest.approx(0.3, abs=0.02) and coef["b"] == pytest.approx(-0.2, abs=0.02)
    assert abs(coef["c"]) < 0.02
    p = predict_with_interval(fit, {"a": 0.5, "b": 0.2, "c": 0.0})
    assert p["predicted"] == pytest.approx(0.3 * 0.5 - 0.2 * 0.2 + 0.1, abs=0.02)
    assert p["low"] < p["predicted"] < p["high"] and not p["extrapolation"]


def test_no_best_predictor_below_min_models():
    zoo = [dict(r, group=r["key"]) for r in _zoo(n_models=7)]
    fit = fit_gap_predictors(zoo, ("gbm", "linear"), min_models=8)
    assert fit.best is None and fit.chosen == "gbm"
    result = predict_gap(GapConfig(predictors=("gbm", "linear")), zoo_rows=_zoo(n_models=7),
                         targets={"grown": _target(0.1, 0.1)}, seed=0)
    assert result.best_predictor == ""
    from steps.predict_gap import report
    assert "no best predictor named" in report(result)[0].text


def test_extrapolation_is_flagged_with_the_reason():
    result = predict_gap(GapConfig(predictors=("linear",)), zoo_rows=_zoo(n_models=9),
                         targets={"inside": _target(0.2, 0.1), "outside": _target(25.0, 0.1)}, seed=0)
    inside, outside = result.predictions["inside"], result.predictions["outside"]
    assert not inside["extrapolation"] and inside["verdict"].startswith("gap ")
    assert outside["extrapolation"] and outside["verdict"].startswith("extrapolation: a = 25 is above")
    assert len(outside["extrapolation_reasons"]) == 1
    assert outside["val_loss_predicted"] == pytest.approx(3.0 + outside["predicted"])
    x, names = feature_matrix([r["features"] for r in _zoo(n_models=3)])
    assert extrapolation_reasons(x, names, {"a": -99.0, "b": 99.0, "c": 0.0})[0].startswith("a = -99 is below")


def test_shuffled_targets_give_no_r2():
    rows = _zoo(n_models=12, noise=0.01)
    for predictor in ("linear", "gbm"):
        assert permutation_r2(rows, predictor, seed=0) <= 0.1, predictor


def test_too_small_a_zoo_names_the_fix():
    with pytest.raises(ValueError, match="lm_zoo_flow.py"):
        predict_gap(GapConfig(), zoo_rows=_zoo(n_models=1, n_ckpt=2), targets={}, seed=0)


# ------------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("zoo_file,growth_file", [("default.toml", "default.toml"), ("tiny.toml", "tiny.toml")])
def test_lm_zoo_configs_parse_and_share_growthflows_prepare_section(zoo_file, growth_file):
    from steps.config import load_config_file
    from steps.lm_zoo_config import LMZooConfig

    zoo = load_toml(LMZooConfig, (ROOT / "config" / "lm_zoo" / zoo_file).read_text(), source=zoo_file)
    growth = load_config_file(ROOT / "config" / growth_file)
    assert zoo.prepare == growth.prepare, "the zoo must prepare the same tokens as GrowthFlow (data fingerprint)"
    assert zoo.seed == growth.seed
    assert (zoo.zoo.train_eval_rows, zoo.zoo.feature_rows) == (growth.predict_gap.train_eval_rows,
                                                                growth.predict_gap.feature_rows)


def test_bad_zoo_config_names_key_and_fix():
    from libs.schema import ConfigError
    from steps.lm_zoo_config import LMZooConfig

    with pytest.raises(ConfigError, match="multiples of zoo.head_dim=24"):
        load_toml(LMZooConfig, "[zoo]\nwidths = [32]\n", source="x.toml")
    with pytest.raises(ConfigError, match="feature_rows"):
        load_toml(LMZooConfig, "[zoo]\ntrain_eval_rows = 16\nfeature_rows = 32\n", source="x.toml")


# ------------------------------------------------------------------------------------------- end to end

FLOW = str(ROOT / "flows" / "lm_zoo_flow.py")
TINY = str(ROOT / "config" / "lm_zoo" / "tiny.toml")


def _env(root):
    return {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    from metaflow import Runner

    root = tmp_path_factory.mktemp("lmzoo")
    ids = []
    for _ in range(2):   # two identical runs: the second must add nothing to the first
        with Runner(FLOW, show_output=False, env=_env(root), cwd=str(root), config=[("config", TINY)]).run() as r:
            assert r.status == "successful", r.stderr[-4000:]
            ids.append(r.run.id)
    from metaflow import metadata, namespace
    metadata(f"local@{root}")
    namespace(None)
    return root, ids


@pytest.mark.slow
def test_lm_zoo_flow_end_to_end_and_found_by_fingerprint(zoo_runs):
    from metaflow import Run
    from metaflow.cards import get_cards

    from flows.zoo_client import earlier_run_rows, lm_zoo_rows

    _, (first, second) = zoo_runs
    run = Run(f"LMZooFlow/{second}")
    assert {s.id for s in run} == {"start", "prepare", "train_zoo_shard", "fit_zoo", "end"}
    for s in run:
        for task in s:
            assert len(get_cards(task)) >= 1, f"{s.id} has no card"
    data = run["fit_zoo"].task.data
    assert data.n_models == 4 and len(data.zoo_rows) == 4 * 3
    assert data.fit.best is None                            # 4 models < min_models = 8: no best named
    fp, mfp = run["prepare"].task.data.data_fingerprint, run["prepare"].task.data.measurement_fingerprint
    assert fp == Run(f"LMZooFlow/{first}")["prepare"].task.data.data_fingerprint
    rows, used, _ = lm_zoo_rows(fp, mfp)
    assert used["run_id"] == second and len(rows) == 12 and all(r["source"] == second for r in rows)
    assert lm_zoo_rows("0" * 16, mfp)[1] is None
    # the earlier-run path on real runs: the first run qualifies for the second, never the reverse
    rows, used, excluded = earlier_run_rows("LMZooFlow", second, fp, mfp, max_runs=5, rows_step="fit_zoo",
                                            rows_artifact="zoo_rows")
    assert [u["run_id"] for u in used] == [first] and len(rows) == 12
    _, used_rev, excluded_rev = earlier_run_rows("LMZooFlow", first, fp, mfp, max_runs=5, rows_step="fit_zoo",
                                                 rows_artifact="zoo_rows")
    assert used_rev == [] and "after this run started" in excluded_rev[0]["reason"]
    # identical runs: pooling the second run's rows with the first's adds nothing
    own = Run(f"LMZooFlow/{second}")["fit_zoo"].task.data.zoo_rows
    pooled, dropped = dedup_rows([dict(r, source=second) for r in own] + rows)
    assert dropped == 12 and len(pooled) == 12


def test_growthflow_rows_and_zoo_rows_carry_the_same_features():
    """pretrain_small's checkpoints, a large arm's target and a zoo model are measured alike, so they pool."""
    from libs.gap_features import probe_for_selection
    from libs.lm_zoo import ZooModel, train_zoo_model
    from libs.models import ModelSpec
    from libs.token_data import TokenData
    from libs.training import TrainConfig
    from steps import pretrain_small, train_large

    rng = np.random.default_rng(0)
    n, width, vocab = 40, 13, 40
    tokens = rng.integers(3, vocab, (n + 10, width)).astype(np.int32)
    lengths = rng.integers(5, width + 1, n + 10).astype(np.int32)
    data = TokenData(tokens[:n], lengths[:n], tokens[n:], lengths[n:], np.array(["s"] * n), vocab, width - 1, 0, 1)
    indices = np.arange(0, n, 2)
    train = TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=2, eval_batches=1)
    spec = ModelSpec(name="small_a", n_layer=1, n_embd=16, n_head=2)
    small = pretrain_small.run(pretrain_small.PretrainSmallConfig(models=(spec,), train=train), spec, data=data,
                               indices=indices, weights=np.ones(len(indices)), seed=0, progress=False)
    small = small if isinstance(small, dict) else small.__dict__
    probe = probe_for_selection(data, indices)
    zoo_rows, _ = train_zoo_model(ZooModel(1, 16, 2, 1e-3, 0.5, 0), train_tokens=data.train_tokens,
                                  train_lengths=data.train_lengths, rows=indices, probe=probe, epochs=1.0,
                                  n_checkpoints=2, batch_size=4, warmup_fraction=0.1, vocab_size=vocab,
                                  seq_len=width - 1, bos_token_id=0, eos_token_id=1)
    assert [r["step"] for r in small["gap_rows"]] == [2, 4]
    assert set(small["gap_rows"][0]["features"]) == set(zoo_rows[0]["features"])
    arm = train_large.train_arm(train_large.TrainLargeConfig(train=train), "scratch",
                                init_files=small["model_files"], data=data, indices=indices,
                                weights=np.ones(len(indices)), seed=0, progress=False)
    arm = arm if isinstance(arm, dict) else arm.__dict__
    assert set(arm["gap_features"]) == set(zoo_rows[0]["features"])
    from libs.gap_features import measure_gap
    from libs.models import model_from_files
    again = measure_gap(model_from_files(arm["model_files"]), probe)   # every validation row, the fixed subset
    assert arm["measured_gap"] == pytest.approx(again["gap"], abs=1e-5)
    assert arm["gap_features"]["train_loss"] == pytest.approx(again["train_loss"], abs=1e-5)
