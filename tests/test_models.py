import pytest
import torch
from transformers import AutoModelForCausalLM

from libs.models import (FAMILIES, ModelSpec, build_model, count_parameters, flops_per_token, model_from_files,
                         model_shape, model_to_files)


@pytest.mark.parametrize("family", FAMILIES)
def test_build_save_load_round_trip(family, tmp_path):
    spec = ModelSpec(family=family, n_layer=2, n_embd=32, n_head=4, n_inner=48)
    model = build_model(spec, vocab_size=50, n_positions=16, seed=0, bos_token_id=1, eos_token_id=2)
    assert model_shape(model) == dict(family=family, n_layer=2, n_embd=32, n_head=4, n_inner=48,
                                      vocab_size=50, n_positions=16)
    files = model_to_files(model)
    assert "config.json" in files and "model.safetensors" in files
    x = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(model_from_files(files)(x).logits, model(x).logits)
    for name, data in files.items():       # the files load in any Hugging Face tool
        (tmp_path / name).write_bytes(data)
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(tmp_path)(x).logits, model(x).logits)


def test_same_seed_same_weights_and_global_rng_untouched():
    spec = ModelSpec(n_layer=1, n_embd=16, n_head=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec, vocab_size=20, n_positions=8, seed=5)
    after = torch.rand(1)
    b = build_model(spec, vocab_size=20, n_positions=8, seed=5)
    c = build_model(spec, vocab_size=20, n_positions=8, seed=6)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_flops_per_token_counts_matmuls():
    spec = ModelSpec(n_layer=2, n_embd=32, n_head=2, n_inner=64)
    model = build_model(spec, vocab_size=100, n_positions=16, seed=0)
    per_layer = 4 * 32 * 32 + 2 * 32 * 64        # attention q,k,v,o + MLP in/out (weights)
    n = 2 * per_layer + 100 * 32                 # + the output head
    exact = 6 * count_parameters(model, non_embedding=True) + 6 * 2 * 16 * 32   # untied head is a Linear
    assert flops_per_token(model, 16) == exact
    assert flops_per_token(model, 16) == pytest.approx(6 * n + 6 * 2 * 16 * 32, rel=0.05)  # biases/norms: a few %
    assert count_parameters(model, non_embedding=True) < count_parameters(model)


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        ModelSpec(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelSpec(), vocab_size=1, n_positions=8, seed=0)
    with pytest.raises(ValueError, match="config.json"):
        model_from_files({})
