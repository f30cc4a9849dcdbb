"""Function preservation of every growth operator on tiny GPT-2 and Llama models, random and trained."""
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
