"""The stages run without a flow around them (as from a notebook), on tiny real inputs."""
import dataclasses

import numpy as np
import pytest

from libs.models import ModelSpec, build_model, model_from_files, model_to_files
from libs.token_data import TokenData
from libs.training import TrainConfig
from steps import embed, end, grow, join_large, prepare, select_data

TINY_PREPARE = prepare.PrepareConfig(max_docs_per_source=40, chunk_chars=300, vocab_size=400, seq_len=32)


@pytest.fixture(scope="module")
def prepared():
    return prepare.run(TINY_PREPARE, seed=0)


def test_prepare_produces_the_token_contract(prepared):
    r = prepared
    assert r.train_tokens.shape == (len(r.train_texts), 33) and r.val_tokens.shape[1] == 33
    assert len(r.train_sources) == len(r.train_tokens)
    assert set(r.source_counts.source) == {"shakespeare", "kjv", "stdlib"}
    assert int(r.source_counts.n_docs.sum()) == len(r.documents)
    assert (r.train_tokens[:, 0] == r.bos_id).all()
    again = prepare.run(TINY_PREPARE, seed=0)
    np.testing.assert_array_equal(again.train_tokens, r.train_tokens)
    assert len(prepare.report(r)) == 3


def test_prepare_config_errors():
    with pytest.raises(ValueError, match="no corpus"):
        prepare.PrepareConfig(sources=(), files=())
    with pytest.raises(ValueError, match="min_chunk_chars"):
        prepare.PrepareConfig(chunk_chars=50, min_chunk_chars=60)


@pytest.fixture(scope="module")
def selected(prepared):
    r = prepared
    e = embed.run(embed.EmbedConfig(method="tfidf", tfidf_dim=8), r.train_texts, seed=0)
    cfg = select_data.SelectConfig(budget=0.4, n_clusters=4, diagnostic_seeds=3,
                              reference_model=ModelSpec(n_layer=1, n_embd=16, n_head=2),
                              reference_train=TrainConfig(steps=4, batch_size=4, warmup_steps=1, eval_every=4,
                                                          eval_batches=1))
    args = dict(embeddings=e.embeddings, data=TokenData.from_attrs(r), seed=0, progress=False)
    return cfg, args, select_data.run(cfg, **args)


def test_select_returns_weighted_unique_rows(selected):
    cfg, args, s = selected
    n = args["data"].n_train
    assert s.budget_docs == round(0.4 * n) and len(s.indices) <= s.budget_docs
    assert len(np.unique(s.indices)) == len(s.indices)
    assert s.weights.mean() == pytest.approx(1.0)
    assert s.n_loss_queries >= 4                                   # the centers at least
    drawn = s.probabilities[s.indices] > 0                          # center rows are kept with weight 1
    np.testing.assert_allclose(s.raw_weights[~drawn], 1.0)
    counts = s.probabilities[s.indices][drawn] * s.raw_weights[drawn] * s.n_draws   # w = (times drawn)/(s p)
    np.testing.assert_allclose(counts, np.round(counts), rtol=1e-9)
    assert (np.round(counts) >= 1).all() and np.round(counts).sum() == s.n_draws
    d = s.diagnostics
    assert np.isfinite(d["true_mean_loss"]) and np.isfinite(d["uniform_relative_std_equal_docs"])
    again = select_data.run(cfg, **args)
    np.testing.assert_array_equal(again.indices, s.indices)        # same seed, same selection


@pytest.mark.parametrize("method", ["uniform", "stratified", "kcenter", "sensitivity_distance"])
def test_select_methods_share_the_api(selected, method):
    cfg, args, _ = selected
    s = select_data.run(dataclasses.replace(cfg, method=method), **args)
    assert len(s.indices) > 0 and np.isfinite(s.weights).all()


def test_select_budget_larger_than_data(selected):
    cfg, args, _ = selected
    n = args["data"].n_train
    with pytest.raises(ValueError, match=f"budget_docs={n + 1} is larger than the {n} training documents"):
        select_data.run(dataclasses.replace(cfg, budget_docs=n + 1), **args)
    with pytest.raises(ValueError, match="embeddings has 3 rows"):
        select_data.run(cfg, **{**args, "embeddings": args["embeddings"][:3]})


def test_grow_step_fuses_and_reports(prepared):
    r = prepared
    smalls = {name: model_to_files(build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), vocab_size=r.vocab_size,
                                               n_positions=r.seq_len + 1, seed=i))
              for i, name in enumerate(["a", "b"])}
    result = grow.run(grow.GrowConfig(method="fuse"), small_models=smalls, check_tokens=r.val_tokens, seed=0)
    assert result.shape_after["n_embd"] == 32 and not result.preservation["exact_expected"]
    assert model_from_files(result.model_files).config.n_embd == 32
    same = grow.run(grow.GrowConfig(method="self_fuse"), small_models=smalls, check_tokens=r.val_tokens, seed=0)
    assert same.preservation["max_abs_dlogit"] <= 1e-5
    with pytest.raises(ValueError, match="at least two small models"):
        grow.run(grow.GrowConfig(method="fuse"), small_models={"a": smalls["a"]}, check_tokens=r.val_tokens, seed=0)


def test_grow_applies_the_same_operator_to_the_components_random_inits(prepared):
    """The grown model's distance-from-init reference: the operator applied to the components' random inits."""
    import torch

    from libs.growth import fuse_models, self_fuse

    r = prepared
    spec = ModelSpec(n_layer=1, n_embd=16, n_head=2)
    inits = {n: build_model(spec, vocab_size=r.vocab_size, n_positions=r.seq_len + 1, seed=i)
             for i, n in enumerate(["a", "b"])}
    trained = {}
    for n, m in inits.items():                            # "trained": the init moved by a fixed perturbation
        moved = model_from_files(model_to_files(m))
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(0.05)
        trained[n] = model_to_files(moved)
    init_files = {n: model_to_files(m) for n, m in inits.items()}
    fused = grow.run(grow.GrowConfig(method="fuse"), small_models=trained, check_tokens=r.val_tokens, seed=0,
                     small_inits=init_files)
    expected = fuse_models([model_from_files(init_files["a"]), model_from_files(init_files["b"])]).state_dict()
    got = model_from_files(fused.reference_init_files).state_dict()
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    grown = model_from_files(fused.model_files).state_dict()
    assert any(not torch.equal(grown[k], got[k]) for k in got)             # the reference is not the grown model
    doubled = grow.run(grow.GrowConfig(method="self_fuse"), small_models=trained, check_tokens=r.val_tokens, seed=3,
                       small_inits=init_files)
    expected = self_fuse(model_from_files(init_files["a"]), noise_std=0.32, tiling="diagonal",
                         random_state=3).state_dict()
    for name, value in model_from_files(doubled.reference_init_files).state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    missing = grow.run(grow.GrowConfig(method="fuse"), small_models=trained, check_tokens=r.val_tokens, seed=0,
                       small_inits={"a": init_files["a"], "b": None})        # a run from before inits were kept
    assert missing.reference_init_files is None


def test_train_large_measures_distance_from_the_given_reference_init(prepared):
    """A grown or control arm's distance-from-init features are measured from ``gap["reference_init"]``."""
    import torch

    from libs.gap_features import weight_norm_features
    from steps import train_large

    r = prepared
    data = TokenData.from_attrs(r)
    spec = ModelSpec(n_layer=1, n_embd=16, n_head=2)
    start = build_model(spec, vocab_size=r.vocab_size, n_positions=r.seq_len + 1, seed=0)
    reference = build_model(spec, vocab_size=r.vocab_size, n_positions=r.seq_len + 1, seed=1)
    cfg = train_large.TrainLargeConfig(train=TrainConfig(steps=2, batch_size=4, warmup_steps=1, eval_every=2,
                                                         eval_batches=1, checkpoint_every=0))
    indices = np.arange(20)
    common = dict(init_files=model_to_files(start), data=data, indices=indices, weights=np.ones(20), seed=0,
                  progress=False)
    gap = {"train_eval_rows": 8, "feature_rows": 4}
    own = train_large.run(cfg, "grown", **common, gap=gap)
    given = train_large.run(cfg, "grown", **common, gap={**gap, "reference_init": model_to_files(reference)})
    trained = model_from_files(given.model_files)
    expected = weight_norm_features(trained, {k: v for k, v in reference.state_dict().items()})
    assert given.gap_features["log_rms_dist_from_init"] == pytest.approx(expected["log_rms_dist_from_init"], rel=1e-9)
    assert own.gap_features["log_rms_dist_from_init"] < given.gap_features["log_rms_dist_from_init"] - 0.5
    torch.testing.assert_close(model_from_files(own.model_files).state_dict()["lm_head.weight"],
                               trained.state_dict()["lm_head.weight"])    # the reference changes no training


def _curves(control_final: float):
    scratch = [{"step": s, "val_loss": 5 - s / 100} for s in range(0, 101, 20)]     # final 4.0 at step 100
    grown = [{"step": s, "val_loss": 4.5 - s / 50} for s in range(0, 101, 20)]      # reaches 4.0 at step 25
    control = [{"step": s, "val_loss": 4.6 - (4.6 - control_final) * s / 300} for s in range(0, 301, 50)]
    return {"grown": grown, "scratch": scratch, "control": control}


def _join(control_final: float):
    return join_large.run(curves=_curves(control_final),
                          flops_per_step={"grown": 10.0, "scratch": 10.0, "control": 2.0},
                          small_pretrain_flops={"a": 200.0, "b": 300.0}, components={"grown": ["a", "b"]},
                          control_small_model="a")


def _summary(result):
    return end.run(n_train_docs=100, n_selected=10, selection_method="sensitivity", grow_method="fuse",
                   preservation={"max_abs_dlogit": 0.5}, verdict=result.verdict, verdict_summary=result.summary,
                   large_final_val_loss=result.final_val_loss,
                   large_tokens_per_s={"grown": 1.0, "scratch": 1.0, "control": 1.0}, gap_predictions={})


def test_join_large_states_a_saving_only_behind_a_passing_capacity_check():
    passed = _join(control_final=4.3)                 # the control ends above scratch's 4.0: capacity passes
    row = passed.verdict["arms"]["grown"]
    assert passed.verdict["capacity_check"]["passed"] is True
    assert row["steps_to_target"] == pytest.approx(25.0) and row["step_ratio"] == pytest.approx(0.25)
    assert row["flops_ratio_total"] == pytest.approx((250 + 500) / 1000)
    assert row["flops_ratio_critical_path"] == pytest.approx((250 + 300) / 1000)
    assert row["verdict"] == "saving" and "0.25x" in passed.summary
    figures = _summary(passed).figures
    assert figures["step_ratio_grown"] == pytest.approx(0.25) and figures["verdict_grown"] == "saving"
    assert "step_ratio_scratch" not in figures and "step_ratio_control" not in figures
    assert len(join_large.report(passed)) == 4

    failed = _join(control_final=3.8)                 # the small model trained on beats scratch: not assessed
    row = failed.verdict["arms"]["grown"]
    assert failed.verdict["capacity_check"]["passed"] is False
    assert row["verdict"] == "not assessed: capacity check failed" and row["step_ratio"] is None
    assert "0.25x" not in failed.summary and "no speedup is stated" in failed.summary
    figures = _summary(failed).figures
    assert figures["verdict_grown"] == "not assessed: capacity check failed" and "step_ratio_grown" not in figures
    assert "0.25x" not in _summary(failed).text


def test_grown_arm_schedule_never_exceeds_the_peaks():
    """The flow's grown arm: peak at most the components' final lr and the large arms' lr; 'restart' = scratch's."""
    from libs.training import TrainConfig, final_lr, lr_at_step
    from steps import train_large

    components = TrainConfig(steps=100, lr=3e-3, warmup_steps=10, min_lr_ratio=0.5)
    cfg = train_large.TrainLargeConfig(train=TrainConfig(steps=200, lr=4e-3, warmup_steps=20),
                                       grown_warmup_steps=5, grown_decay_fraction=0.5)
    grown = train_large.arm_config(cfg, "grown", components_train=components).train
    peak = min(cfg.train.lr, final_lr(components))
    lrs = [lr_at_step(grown, step) for step in range(grown.steps)]
    assert max(lrs) <= peak + 1e-12 and max(lrs) == pytest.approx(peak)
    assert grown.warmup_steps == 5 and grown.decay_steps == round(0.5 * 195)
    restart = dataclasses.replace(cfg, grown_schedule="restart")
    assert train_large.arm_config(restart, "grown", components_train=components).train == cfg.train
    assert train_large.arm_config(cfg, "scratch", components_train=components).train == cfg.train


def test_gap_rows_keyed_by_what_shaped_them():
    """Identical config and seed give identical keys (an earlier duplicate run is dropped once); predict_gap and
    resources settings do not change the key; another seed does."""
    from steps import predict_gap

    settings = {"seed": 0, "prepare": {"vocab_size": 512}, "predict_gap": {"predictors": ["linear"]},
                "resources": {"embed": {"cpu": 4}}}
    rows = [{"model": "small_a", "gap": 0.1}]
    key = predict_gap.own_rows(settings, rows)[0]["key"]
    assert key.endswith(":small_a")
    other_gap = {**settings, "predict_gap": {"predictors": ["gbm"]}, "resources": {}}
    assert predict_gap.own_rows(other_gap, rows)[0]["key"] == key
    assert predict_gap.own_rows({**settings, "seed": 1}, rows)[0]["key"] != key
    assert predict_gap.own_rows(settings, rows)[0]["gap"] == 0.1 and "key" not in rows[0]


def test_data_parallel_inputs_carry_the_reference_init_as_files(prepared, tmp_path):
    """What the DDP ranks read back is what the launcher wrote, the reference init included (as files, not JSON)."""
    from steps import train_large

    r = prepared
    data = TokenData.from_attrs(r)
    spec = ModelSpec(n_layer=1, n_embd=16, n_head=2)
    start = model_to_files(build_model(spec, vocab_size=r.vocab_size, n_positions=r.seq_len + 1, seed=0))
    reference = model_to_files(build_model(spec, vocab_size=r.vocab_size, n_positions=r.seq_len + 1, seed=1))
    gap = {"train_eval_rows": 8, "feature_rows": 4, "tokens_before": 123.0, "reference_init": reference}
    train_large.write_inputs(tmp_path, train_large.TrainLargeConfig(), "grown", init_files=start, data=data,
                             indices=np.arange(10), weights=np.ones(10), seed=5, init_flops=1.0, checkpoint_dir=None,
                             backend="gloo", threads_per_rank=1, progress=False, gap=gap)
    back = train_large.read_inputs(tmp_path)
    assert back["init_files"] == start and back["gap"]["reference_init"] == reference
    assert {k: v for k, v in back["gap"].items() if k != "reference_init"} == {"train_eval_rows": 8, "feature_rows": 4,
                                                                               "tokens_before": 123.0}
    assert gap["reference_init"] == reference                     # the caller's dict is left as it was
    assert back["moment_files"] is None                           # none given, none read


def _small_run(r, seed: int, steps: int = 3):
    """A tiny pretrained small model of the prepared data: its files and its AdamW moment files."""
    from steps import pretrain_small

    data = TokenData.from_attrs(r)
    cfg = pretrain_small.PretrainSmallConfig(train=TrainConfig(steps=steps, batch_size=4, warmup_steps=1,
                                                               eval_every=steps, eval_batches=1))
    spec = ModelSpec(name=f"m{seed}", n_layer=1, n_embd=16, n_head=2)
    return pretrain_small.run(cfg, spec, data=data, indices=np.arange(16), weights=np.ones(16), seed=seed,
                              progress=False, train_eval_rows=8, feature_rows=4)


def test_carried_moments_flow_from_pretraining_through_growth_into_the_grown_arm(prepared, tmp_path):
    """pretrain_small keeps its moments, grow maps them through the operator, train_large starts from them
    (and the DDP ranks get them as files); scratch refuses them, and 'carry' without moments is a clear error."""
    import torch

    from libs.optimizer_state import grow_moments, moment_step, moments_from_files
    from libs.growth import fuse_models
    from steps import train_large

    r = prepared
    a, b = _small_run(r, 0), _small_run(r, 1)
    assert moment_step(moments_from_files(a.moment_files)) == 3
    smalls = {"a": a.model_files, "b": b.model_files}
    g = grow.run(grow.GrowConfig(method="fuse"), small_models=smalls, check_tokens=r.val_tokens, seed=0,
                 small_moments={"a": a.moment_files, "b": b.moment_files})
    expected = grow_moments(lambda ms: fuse_models(ms, center=False),
                            [model_from_files(a.model_files), model_from_files(b.model_files)],
                            [moments_from_files(a.moment_files), moments_from_files(b.moment_files)])
    got = moments_from_files(g.moment_files)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    none = grow.run(grow.GrowConfig(method="fuse"), small_models=smalls, check_tokens=r.val_tokens, seed=0,
                    small_moments={"a": a.moment_files, "b": None})       # a run from before moments were kept
    assert none.moment_files is None

    data = TokenData.from_attrs(r)
    cfg = train_large.TrainLargeConfig(train=TrainConfig(steps=2, batch_size=4, warmup_steps=0, eval_every=2,
                                                         eval_batches=1, checkpoint_every=0))
    common = dict(init_files=g.model_files, data=data, indices=np.arange(16), weights=np.ones(16), seed=0,
                  progress=False, gap={"train_eval_rows": 8, "feature_rows": 4})
    fresh = train_large.run(cfg, "grown", **common)
    carried = train_large.run(cfg, "grown", **common, moment_files=g.moment_files)
    assert carried.curve[0]["val_loss"] == fresh.curve[0]["val_loss"]            # the same starting model
    assert carried.final_val_loss != fresh.final_val_loss                       # a different first update
    with pytest.raises(ValueError, match="scratch arm starts from a random initialization"):
        train_large.run(cfg, "scratch", **common, moment_files=g.moment_files)

    carry = dataclasses.replace(cfg, grown_optimizer="carry")
    assert train_large.grown_moment_files(cfg, g.moment_files) is None          # 'fresh' ignores them
    assert train_large.grown_moment_files(carry, g.moment_files) == g.moment_files
    with pytest.raises(ValueError, match="grown_optimizer = 'fresh'"):
        train_large.grown_moment_files(carry, None)

    train_large.write_inputs(tmp_path, carry, "grown", init_files=g.model_files, data=data, indices=np.arange(10),
                             weights=np.ones(10), seed=5, init_flops=1.0, checkpoint_dir=None, backend="gloo",
                             threads_per_rank=1, progress=False, gap={}, moment_files=g.moment_files)
    assert train_large.read_inputs(tmp_path)["moment_files"] == g.moment_files
