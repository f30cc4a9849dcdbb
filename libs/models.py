"""Model builders for the supported Hugging Face families, and their on-the-wire format.

Models travel between pipeline steps as the files ``save_pretrained`` writes
(``config.json`` + ``model.safetensors``), held as a ``{file name: bytes}`` dict:
never a pickled module, so any Hugging Face tool can load what a step produced.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, PreTrainedModel)

from libs.schema import option

__all__ = ["FAMILIES", "ModelSpec", "build_model", "model_to_files", "model_from_files",
           "count_parameters", "flops_per_token", "model_shape", "load_model_from_run"]

FAMILIES = ("gpt2", "llama")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only LM; vocabulary and context come from the data."""

    name: str = option("model", "a label for this model (shows in artifacts and cards)")
    family: str = option("gpt2", "Hugging Face family: GPT2LMHeadModel or LlamaForCausalLM",
                         choices=FAMILIES)
    n_layer: int = option(2, "transformer blocks", min=1)
    n_embd: int = option(64, "hidden width (must be divisible by n_head)", min=8)
    n_head: int = option(2, "attention heads", min=1)
    n_inner: int = option(0, "MLP width; 0 means 4 * n_embd", min=0)
    tie_embeddings: bool = option(False, "tie the output head to the token embedding")

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "choose a width that is a multiple of the head count")

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd


def build_model(spec: ModelSpec, *, vocab_size: int, n_positions: int, seed: int,
                bos_token_id: int | None = None, eos_token_id: int | None = None,
                dropout: float = 0.0) -> PreTrainedModel:
    """A freshly initialised model of ``spec``'s family, seeded (same seed, same weights)."""
    if vocab_size < 2 or n_positions < 2:
        raise ValueError(f"vocab_size={vocab_size} and n_positions={n_positions} must be >= 2")
    common = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                  tie_word_embeddings=spec.tie_embeddings)
    if spec.family == "gpt2":
        config = GPT2Config(n_positions=n_positions, n_embd=spec.n_embd, n_layer=spec.n_layer,
                            n_head=spec.n_head, n_inner=spec.mlp_width, resid_pdrop=dropout,
                            embd_pdrop=dropout, attn_pdrop=dropout,
                            scale_attn_by_inverse_layer_idx=False, **common)
        cls = GPT2LMHeadModel
    elif spec.family == "llama":
        config = LlamaConfig(hidden_size=spec.n_embd, intermediate_size=spec.mlp_width,
                             num_hidden_layers=spec.n_layer, num_attention_heads=spec.n_head,
                             num_key_value_heads=spec.n_head, max_position_embeddings=n_positions,
                             attention_dropout=dropout, **common)
        cls = LlamaForCausalLM
    else:
        raise ValueError(f"unknown model family {spec.family!r}; supported: {', '.join(FAMILIES)}")
    config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = cls(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def model_shape(model: PreTrainedModel) -> dict[str, Any]:
    """Family-independent shape fields of a model's config."""
    c = model.config
    if c.model_type == "gpt2":
        return dict(family="gpt2", n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                    n_inner=c.n_inner or 4 * c.n_embd, vocab_size=c.vocab_size,
                    n_positions=c.n_positions)
    if c.model_type == "llama":
        return dict(family="llama", n_layer=c.num_hidden_layers, n_embd=c.hidden_size,
                    n_head=c.num_attention_heads, n_inner=c.intermediate_size,
                    vocab_size=c.vocab_size, n_positions=c.max_position_embeddings)
    raise ValueError(f"unsupported model type {c.model_type!r}; supported: {', '.join(FAMILIES)}")


def count_parameters(model: torch.nn.Module, *, non_embedding: bool = False) -> int:
    """Number of parameters (``non_embedding`` leaves out token and position tables)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                total -= m.weight.numel()
    return total


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward matmuls, head included) plus attention.

    N counts the non-embedding parameters and the output head (an embedding lookup
    costs no FLOPs, the head's matmul does); attention adds 6 * n_layer * seq_len * n_embd
    (Kaplan et al. 2020, with the backward pass).
    """
    shape = model_shape(model)
    head = shape["vocab_size"] * shape["n_embd"]
    n = count_parameters(model, non_embedding=True)
    if not getattr(model.config, "tie_word_embeddings", False):
        n -= head  # the untied head is a Linear, already counted: do not count it twice
    return 6.0 * (n + head) + 6.0 * shape["n_layer"] * seq_len * shape["n_embd"]


def model_to_files(model: PreTrainedModel) -> dict[str, bytes]:
    """The ``save_pretrained`` files of ``model`` as ``{name: bytes}`` (safetensors weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def model_from_files(files: dict[str, bytes], *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a model saved by :func:`model_to_files` (or any ``save_pretrained`` folder's files)."""
    if not files or "config.json" not in files:
        raise ValueError("model files must contain config.json and weights "
                         f"(got {sorted(files) if files else 'nothing'})")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype)
    model.config._attn_implementation = "eager"
    return model


def load_model_from_run(run: Any, arm: str = "grown") -> PreTrainedModel:
    """A trained model of a finished GrowthFlow run, as a ``transformers`` model.

    ``run`` is a Metaflow Client ``Run`` (e.g. ``Flow("GrowthFlow").latest_successful_run``);
    it is used through its public interface only, so this module does not import Metaflow.
    ``arm`` is a large-model arm ("grown" or "scratch"), or ``small:<name>`` for a small model.
    """
    if arm.startswith("small:"):
        name = arm.split(":", 1)[1]
        models = run["join_small"].task.data.small_models
        if name not in models:
            raise KeyError(f"run {run.pathspec} has no small model {name!r}; it has {sorted(models)}")
        return model_from_files(models[name])
    models = run["join_large"].task.data.large_models
    if arm not in models:
        raise KeyError(f"run {run.pathspec} has no large-model arm {arm!r}; it has {sorted(models)}")
    return model_from_files(models[arm])
