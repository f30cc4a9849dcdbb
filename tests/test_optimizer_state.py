"""AdamW moments: taken from a run, stored, carried through growth, given to a new optimizer."""
import dataclasses

import numpy as np
import pytest
import torch

from libs.growth import fuse_models, self_fuse, stack_layers
from libs.models import FAMILIES, ModelSpec, build_model
from libs.optimizer_state import (apply_moments, extract_moments, grow_moments, moment_step, moments_from_files,
                                  moments_to_files)
from libs.training import TrainConfig, train_model

V, P = 40, 16


def _model(family="gpt2", seed=0, tie=False, width=16):
    return build_model(ModelSpec(family=family, n_layer=2, n_embd=width, n_head=2, n_inner=24, tie_embeddings=tie),
                       vocab_size=V, n_positions=P, seed=seed)


def _rows(seed, n=8):
    t = np.random.default_rng(seed).integers(0, V, (n, P)).astype(np.int32)
    return t, np.full(n, P, dtype=np.int32)


CFG = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0, eval_every=4, eval_batches=1)


def _trained(family="gpt2", seed=0, tie=False, steps=4):
    m = _model(family, seed, tie)
    t, n = _rows(seed)
    r = train_model(m, t, n, t, n, dataclasses.replace(CFG, steps=steps), seed=seed, progress=False,
                    keep_moments=True)
    return m, r.moments


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_moments_round_trip_through_files_and_a_new_optimizer(tie):
    model, moments = _trained(tie=tie)
    assert moment_step(moments) == 4
    back = moments_from_files(moments_to_files(moments))
    assert set(back) == set(moments) and all(torch.equal(back[k], moments[k]) for k in moments)
    if tie:      # a tied parameter appears under both of its names, with the same moments
        assert torch.equal(back["exp_avg.lm_head.weight"], back["exp_avg.transformer.wte.weight"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    apply_moments(model, opt, back)
    again = extract_moments(model, opt)
    assert all(torch.equal(again[k], moments[k]) for k in moments)


def test_carried_moments_continue_training_as_if_uninterrupted():
    """Two steps, then two more from the carried moments, equal four uninterrupted steps; a fresh
    optimizer state for the last two does not (the rows are one batch, so every step sees all of them)."""
    t, n = _rows(0)
    whole = _model()
    train_model(whole, t, n, t, n, CFG, seed=0, progress=False)
    first = _model()
    half = dataclasses.replace(CFG, steps=2, eval_every=2)
    moments = train_model(first, t, n, t, n, half, seed=0, progress=False, keep_moments=True).moments
    carried, fresh = _model(), _model()
    carried.load_state_dict(first.state_dict())
    fresh.load_state_dict(first.state_dict())
    train_model(carried, t, n, t, n, half, seed=0, progress=False, initial_moments=moments)
    train_model(fresh, t, n, t, n, half, seed=0, progress=False)
    for (name, a), b, c in zip(whole.state_dict().items(), carried.state_dict().values(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=2e-6), name
    assert max(float((a - c).detach().abs().max()) for a, c in zip(whole.parameters(), fresh.parameters())) > 1e-4


def test_moments_of_another_model_are_refused():
    model, _ = _trained()
    t, n = _rows(1)
    wide = train_model(_model(width=32), t, n, t, n, CFG, seed=1, progress=False, keep_moments=True).moments
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="shape"):
        apply_moments(model, opt, wide)
    with pytest.raises(ValueError, match="no entry for parameter"):
        apply_moments(model, opt, {"step": torch.tensor(3.0)})
    with pytest.raises(ValueError, match="at least one optimizer step"):
        extract_moments(model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(ValueError, match="adam_moments.safetensors"):
        moments_from_files({"model.safetensors": b""})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_deep_fusion_places_each_components_moments_in_its_block(family, tie):
    (a, ma), (b, mb) = _trained(family, 0, tie), _trained(family, 1, tie)
    g = grow_moments(lambda ms: fuse_models(ms, center=False), [a, b], [ma, mb])
    fused = fuse_models([a, b])
    for name, p in fused.state_dict().items():
        if name in {n for n, _ in fused.named_parameters()}:
            assert g[f"exp_avg.{name}"].shape == p.shape and g[f"exp_avg_sq.{name}"].shape == p.shape
    assert moment_step(g) == 4
    E = a.config.hidden_size
    emb = "transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"
    assert torch.equal(g[f"exp_avg.{emb}"][:, :E], ma[f"exp_avg.{emb}"])
    assert torch.allclose(g[f"exp_avg_sq.{emb}"][:, E:], mb[f"exp_avg_sq.{emb}"], rtol=1e-6, atol=0)   # via sqrt
    # the head is the mean of the components' heads (W / 2): m / 2 and v / 4, Adam's ratio kept
    head = "lm_head.weight"
    assert torch.allclose(g[f"exp_avg.{head}"][:, :E], ma[f"exp_avg.{head}"] / 2)
    assert torch.allclose(g[f"exp_avg_sq.{head}"][:, E:], mb[f"exp_avg_sq.{head}"] / 4)
    # a block-diagonal matrix: the zero blocks start with m = 0 and the mean v of the copied blocks
    mat = "transformer.h.0.mlp.c_fc.weight" if family == "gpt2" else "model.layers.0.mlp.up_proj.weight"
    m, v = g[f"exp_avg.{mat}"], g[f"exp_avg_sq.{mat}"]
    ref_a = ma[f"exp_avg_sq.{mat}"]
    if family == "gpt2":          # Conv1D: (in, out)
        off_m, off_v, diag_v = m[:E, ref_a.shape[1]:], v[:E, ref_a.shape[1]:], v[:E, :ref_a.shape[1]]
    else:                         # Linear: (out, in)
        off_m, off_v, diag_v = m[:ref_a.shape[0], E:], v[:ref_a.shape[0], E:], v[:ref_a.shape[0], :E]
    assert torch.allclose(diag_v, ref_a, rtol=1e-6, atol=0)
    assert float(off_m.abs().max()) == 0.0
    copied = torch.cat([ma[f"exp_avg_sq.{mat}"].flatten(), mb[f"exp_avg_sq.{mat}"].flatten()])
    assert torch.allclose(off_v, torch.full_like(off_v, float(copied.mean())), rtol=1e-5)


def test_self_fusion_full_tiling_and_stacking_copy_every_entry():
    a, ma = _trained()
    g = grow_moments(lambda ms: self_fuse(ms[0], tiling="full"), [a], [ma])
    mat = "transformer.h.1.attn.c_proj.weight"
    v = ma[f"exp_avg_sq.{mat}"]
    assert torch.allclose(g[f"exp_avg_sq.{mat}"], (v / 4).repeat(2, 2))      # every block W / 2: v / 4
    assert float((g[f"exp_avg_sq.{mat}"] > 0).float().mean()) == 1.0      # every block a copy: none filled
    stacked = grow_moments(lambda ms: stack_layers(ms[0], mode="copy"), [a], [ma])
    assert torch.equal(stacked["exp_avg.transformer.h.3.mlp.c_fc.weight"], ma["exp_avg.transformer.h.1.mlp.c_fc.weight"])


def test_grow_moments_refuses_mismatched_inputs():
    a, ma = _trained()
    with pytest.raises(ValueError, match="one set of moments per component"):
        grow_moments(lambda ms: fuse_models(ms, center=False), [a, a], [ma])
    with pytest.raises(ValueError, match="different model"):
        grow_moments(lambda ms: ms[0], [a], [{"step": torch.tensor(1.0)}])
