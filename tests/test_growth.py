"""Function preservation of every growth operator on tiny GPT-2 and Llama models, random and trained."""
import math

import numpy as np
import pytest
import torch

from libs.growth import GrowthError, fuse_models, preservation_error, self_fuse, stack_layers
from libs.models import FAMILIES, ModelSpec, build_model, model_from_files, model_shape, model_to_files
from libs.training import TrainConfig, train_model

V, P = 40, 16
TOKENS = np.random.default_rng(0).integers(0, V, (3, 12))


def _model(family, seed, trained=False, width=16, heads=2, layers=2, inner=24):
    m = build_model(ModelSpec(family=family, n_layer=layers, n_embd=width, n_head=heads, n_inner=inner),
                    vocab_size=V, n_positions=P, seed=seed)
    with torch.no_grad():                       # non-trivial norm gains and biases
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    if trained:
        rng = np.random.default_rng(seed)
        t = rng.integers(0, V, (32, P)).astype(np.int32)
        lengths = np.full(32, P, dtype=np.int32)
        train_model(m, t, lengths, t, lengths, TrainConfig(steps=5, batch_size=8, warmup_steps=1, eval_every=5),
                    seed=seed, progress=False)
    return m.eval()


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("family", FAMILIES)
def test_exact_operators_preserve_the_function(family, trained):
    a = _model(family, 0, trained)
    assert preservation_error(self_fuse(a), [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    assert preservation_error(self_fuse(a, noise_std=0.1, random_state=1), [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    assert preservation_error(fuse_models([a, a, a]), [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    assert preservation_error(stack_layers(a, mode="zero"), [a], TOKENS)["max_abs_dlogit"] <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_inexact_operators_deviate_measurably(family):
    a, b = _model(family, 0, True), _model(family, 1, True)
    fused = preservation_error(fuse_models([a, b]), [a, b], TOKENS)
    assert 1e-4 < fused["relative_deviation"] < 1.0        # coupled by the norms: measured, not hidden
    assert preservation_error(stack_layers(a, mode="copy"), [a], TOKENS)["max_abs_dlogit"] > 1e-3


def test_fusion_is_exact_without_normalisation():
    """With the norms made identity maps the fused logits are exactly the mean of the components'."""
    a, b = _model("gpt2", 0), _model("gpt2", 1)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    fused = fuse_models([a, b], center=False)    # centering relies on LayerNorm, removed here
    for m in (a, b, fused):
        for block in m.transformer.h:
            block.ln_1, block.ln_2 = Identity(), Identity()
        m.transformer.ln_f = Identity()
    assert preservation_error(fused, [a, b], TOKENS)["max_abs_dlogit"] <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_config_and_round_trip(family):
    a, b = _model(family, 0, width=16, heads=2, inner=24), _model(family, 1, width=24, heads=3, inner=40)
    fused = fuse_models([a, b])
    shape = model_shape(fused)
    assert (shape["n_embd"], shape["n_head"], shape["n_inner"], shape["n_layer"]) == (40, 5, 64, 2)
    assert fused.config.tie_word_embeddings is False
    again = model_from_files(model_to_files(fused))
    assert again.config.tie_word_embeddings is False
    x = torch.as_tensor(TOKENS)
    torch.testing.assert_close(again(input_ids=x).logits, fused(input_ids=x).logits)
    assert model_shape(stack_layers(a))["n_layer"] == 4


def test_incompatible_models_are_refused_naming_the_field():
    a = _model("gpt2", 0)
    with pytest.raises(GrowthError, match="differ in family"):
        fuse_models([a, _model("llama", 0)])
    with pytest.raises(GrowthError, match="differ in n_layer"):
        fuse_models([a, _model("gpt2", 1, layers=3)])
    with pytest.raises(GrowthError, match="differ in head size"):
        fuse_models([a, _model("gpt2", 1, width=16, heads=4)])
    other_vocab = build_model(ModelSpec(n_layer=2, n_embd=16, n_head=2), vocab_size=V + 1, n_positions=P, seed=0)
    with pytest.raises(GrowthError, match="differ in vocab_size"):
        fuse_models([a, other_vocab])
    with pytest.raises(GrowthError, match="'copy' or 'zero'"):
        stack_layers(a, mode="twice")


def test_noise_breaks_symmetry_under_training():
    """An exact clone keeps its halves identical after a training step; the noisy clone does not."""
    a = _model("gpt2", 0, trained=True)
    t = np.random.default_rng(5).integers(0, V, (16, P)).astype(np.int32)
    lengths = np.full(16, P, dtype=np.int32)
    gaps = []
    for noise in (0.0, 0.1):
        m = self_fuse(a, noise_std=noise, random_state=0)
        train_model(m, t, lengths, t, lengths, TrainConfig(steps=3, batch_size=8, warmup_steps=0, eval_every=3),
                    seed=0, progress=False)
        w = m.transformer.h[0].mlp.c_fc.weight.detach()
        half = w.shape[0] // 2
        gaps.append(float((w[:half, :w.shape[1] // 2] - w[half:, w.shape[1] // 2:]).abs().max()))
    assert gaps[0] < 1e-6 < gaps[1]


def _tied_or_untied(family, tied, seed=0):
    m = build_model(ModelSpec(family=family, n_layer=2, n_embd=16, n_head=2, n_inner=24, tie_embeddings=tied),
                    vocab_size=V, n_positions=P, seed=seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return m.eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_reparametrisations_preserve_tied_and_untied_models_through_a_round_trip(family, tied):
    from libs.growth import center_residual_stream, scale_residual_stream

    a = _tied_or_untied(family, tied)
    assert bool(a.config.tie_word_embeddings) is tied
    ops = [lambda m: scale_residual_stream(m, 3.0)]
    if family == "gpt2":
        ops.append(center_residual_stream)
    else:
        with pytest.raises(GrowthError, match="RMSNorm"):
            center_residual_stream(a)
    for op in ops:
        grown = op(a)
        assert preservation_error(grown, [a], TOKENS)["max_abs_dlogit"] <= 1e-5
        loaded = model_from_files(model_to_files(grown))     # the head must not be re-tied to the edited table
        assert loaded.config.tie_word_embeddings is False
        assert preservation_error(loaded, [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    assert preservation_error(self_fuse(a, noise_std=0.3), [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    assert preservation_error(fuse_models([a, a]), [a], TOKENS)["max_abs_dlogit"] <= 1e-5


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("family", FAMILIES)
def test_full_tiling_and_hypercloning_noise_preserve_the_function(family, trained):
    from libs.growth import noise_std_for_snr_db

    a = _model(family, 0, trained)
    std = noise_std_for_snr_db(10.0)
    assert std == pytest.approx(0.316, abs=1e-3)
    for copies in (2, 3):
        full = self_fuse(a, n_copies=copies, noise_std=std, tiling="full", random_state=2)
        assert preservation_error(full, [a], TOKENS)["max_abs_dlogit"] <= 1e-5
    clean = self_fuse(a, tiling="full")
    name = "transformer.h.0.mlp.c_fc.weight" if family == "gpt2" else "model.layers.0.mlp.up_proj.weight"
    w = clean.state_dict()[name]
    half_r, half_c = w.shape[0] // 2, w.shape[1] // 2
    torch.testing.assert_close(w[:half_r, :half_c], w[half_r:, half_c:])      # every block the same W / 2
    torch.testing.assert_close(w[:half_r, :half_c], w[:half_r, half_c:])
    with pytest.raises(GrowthError, match="tiling"):
        self_fuse(a, tiling="checkerboard")


def test_hypercloning_noise_is_about_ten_db_below_the_weights():
    from libs.growth import noise_std_for_snr_db

    a = _model("gpt2", 0, trained=True)
    clean, noisy = self_fuse(a), self_fuse(a, noise_std=noise_std_for_snr_db(10.0), random_state=3)
    name = "transformer.h.1.mlp.c_fc.weight"
    signal, noise = clean.state_dict()[name], noisy.state_dict()[name] - clean.state_dict()[name]
    block = signal[:signal.shape[0] // 2, :signal.shape[1] // 2]
    snr_db = 10 * math.log10(float(block.var()) / float(noise.var()))
    assert 8.0 < snr_db < 12.0
