"""Growth operators on Hugging Face GPT-2 and Llama models: fuse, self-fuse, stack.

Deep Fusion (Mazzawi et al. 2023), :func:`fuse_models`: the fused model's width is the sum
of the components' widths and its heads the sum of their heads (the head size stays); every
linear map is block-diagonal over the components with zero cross-blocks; token and position
tables are concatenated along the width; the output head is ``[W_1, ..., W_M] / M``, so the
fused logits are the mean of the components' logits wherever the residual streams stay
separate. What is exact:

* attention, MLPs and the residual stream are block-diagonal, so component m's slice of
  the fused stream is exactly component m's stream **as long as the normalisation layers
  act on each slice as the component's did**;
* LayerNorm / RMSNorm normalise over the whole fused width: the mean and variance (or mean
  square) are those of the concatenation, which couples the components. When every
  component's slice has the same statistics, this is exact: self-fusion (fusing a model with
  copies of itself) and fusing identical models are exact up to float error. For different
  components it is not, and no per-slice rescaling of the norm's gain can fix it (the
  statistics depend on the input); :func:`fuse_models` therefore returns a model whose
  deviation from the mean of the components' logits is measured and reported
  (:func:`preservation_error`), not hidden.

:func:`self_fuse` doubles one model's width exactly, optionally with symmetry-breaking
noise that cancels in the function: each linear map on the duplicated stream becomes
``[[W + N1, -N1], [-N2, W + N2]]``, whose output on ``[x, x]`` is ``[W x, W x]`` for any
``N``. An exact clone without noise keeps its two halves identical under training (same
gradients) and never uses its extra width.

:func:`stack_layers` grows depth: ``mode='copy'`` repeats the layer stack (G_stack, not
function-preserving); ``mode='zero'`` inserts after every layer a copy whose output
projections are zero, so each new block adds nothing to the residual stream (exact).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import PreTrainedModel

from libs.models import model_shape

__all__ = ["GrowthError", "fuse_models", "self_fuse", "stack_layers", "preservation_error", "check_fusable"]


class GrowthError(ValueError):
    """The models cannot be grown or fused as asked."""


def _blockdiag(mats: list[torch.Tensor]) -> torch.Tensor:
    return torch.block_diag(*mats)


def check_fusable(models: list[PreTrainedModel]) -> None:
    """Raise :class:`GrowthError` naming the field in which the components differ."""
    if len(models) < 1:
        raise GrowthError("fusion needs at least one model")
    shapes = [model_shape(m) for m in models]
    first = shapes[0]
    for i, shape in enumerate(shapes[1:], start=1):
        for field in ("family", "vocab_size", "n_positions", "n_layer"):
            if shape[field] != first[field]:
                raise GrowthError(f"cannot fuse: model 0 and model {i} differ in {field} "
                                  f"({first[field]!r} vs {shape[field]!r}); Deep Fusion needs the same {field}")
        if shape["n_embd"] // shape["n_head"] != first["n_embd"] // first["n_head"]:
            raise GrowthError(f"cannot fuse: head size differs (model 0: {first['n_embd'] // first['n_head']}, "
                              f"model {i}: {shape['n_embd'] // shape['n_head']}); fused heads keep the head size")
    for i, m in enumerate(models):
        if getattr(m.config, "tie_word_embeddings", False):
            raise GrowthError(f"cannot fuse: model {i} ties its output head to its embedding; the fused head "
                              "[W_1, ..., W_M] / M needs tie_word_embeddings=False (set tie_embeddings = false)")


def _new_config(model: PreTrainedModel, *, width: int, heads: int, inner: int, layers: int):
    config = copy.deepcopy(model.config)
    if config.model_type == "gpt2":
        config.n_embd, config.n_head, config.n_inner, config.n_layer = width, heads, inner, layers
    else:
        config.hidden_size, config.num_attention_heads, config.intermediate_size = width, heads, inner
        config.num_key_value_heads, config.num_hidden_layers = heads, layers
        config.head_dim = width // heads
    config.tie_word_embeddings = False
    return config


def _instantiate(model: PreTrainedModel, config) -> PreTrainedModel:
    new = type(model)(config)
    new.config._attn_implementation = "eager"
    return new.to(dtype=next(model.parameters()).dtype)


def _fuse_gpt2(models, sd, out):
    E = [m.config.n_embd for m in models]
    M = len(models)
    out["transformer.wte.weight"] = torch.cat([s["transformer.wte.weight"] for s in sd], 1)
    out["transformer.wpe.weight"] = torch.cat([s["transformer.wpe.weight"] for s in sd], 1)
    for i in range(models[0].config.n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            for t in ("weight", "bias"):
                out[p + f"{ln}.{t}"] = torch.cat([s[p + f"{ln}.{t}"] for s in sd])
        # Conv1D stores (in, out); q, k, v are fused along out: split, block-diagonalise, re-join
        qkv = [s[p + "attn.c_attn.weight"].split(e, dim=1) for s, e in zip(sd, E)]
        qkv_b = [s[p + "attn.c_attn.bias"].split(e) for s, e in zip(sd, E)]
        out[p + "attn.c_attn.weight"] = torch.cat([_blockdiag([w[j] for w in qkv]) for j in range(3)], 1)
        out[p + "attn.c_attn.bias"] = torch.cat([torch.cat([b[j] for b in qkv_b]) for j in range(3)])
        for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[p + name + ".weight"] = _blockdiag([s[p + name + ".weight"] for s in sd])
            out[p + name + ".bias"] = torch.cat([s[p + name + ".bias"] for s in sd])
    for t in ("weight", "bias"):
        out[f"transformer.ln_f.{t}"] = torch.cat([s[f"transformer.ln_f.{t}"] for s in sd])
    out["lm_head.weight"] = torch.cat([s["lm_head.weight"] for s in sd], 1) / M


def _fuse_llama(models, sd, out):
    M = len(models)
    out["model.embed_tokens.weight"] = torch.cat([s["model.embed_tokens.weight"] for s in sd], 1)
    for i in range(models[0].config.num_hidden_layers):
        p = f"model.layers.{i}."
        for ln in ("input_layernorm", "post_attention_layernorm"):
            out[p + ln + ".weight"] = torch.cat([s[p + ln + ".weight"] for s in sd])
        # Linear stores (out, in): block-diagonal over components in both layouts
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            out[p + name + ".weight"] = _blockdiag([s[p + name + ".weight"] for s in sd])
    out["model.norm.weight"] = torch.cat([s["model.norm.weight"] for s in sd])
    out["lm_head.weight"] = torch.cat([s["lm_head.weight"] for s in sd], 1) / M


def fuse_models(models: list[PreTrainedModel]) -> PreTrainedModel:
    """Deep Fusion of ``models`` (same family, vocabulary, context, depth and head size).

    Returns a model of the same family with width, heads and MLP width summed over the
    components; the mean of the components' logits where normalisation allows (module doc).
    """
    check_fusable(models)
    shapes = [model_shape(m) for m in models]
    config = _new_config(models[0], width=sum(s["n_embd"] for s in shapes), heads=sum(s["n_head"] for s in shapes),
                         inner=sum(s["n_inner"] for s in shapes), layers=shapes[0]["n_layer"])
    fused = _instantiate(models[0], config)
    sd = [m.state_dict() for m in models]
    out = dict(fused.state_dict())
    with torch.no_grad():
        (_fuse_gpt2 if shapes[0]["family"] == "gpt2" else _fuse_llama)(models, sd, out)
    fused.load_state_dict(out, strict=True)
    return fused.eval()


def _is_linear_on_stream(name: str, family: str) -> str | None:
    """'conv1d' / 'linear' for weights whose input is the (duplicated) hidden stream, else None."""
    if family == "gpt2":
        if name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            return "conv1d"
        return None
    if name.endswith(("_proj.weight",)) and ".layers." in name:
        return "linear"
    if name == "lm_head.weight":
        return "linear"
    return None


def self_fuse(model: PreTrainedModel, *, noise_std: float = 0.0, random_state: int = 0) -> PreTrainedModel:
    """Double ``model``'s width by fusing it with itself; exactly function-preserving.

    noise_std : symmetry-breaking noise, relative to each weight matrix's standard deviation.
        Added as ``[[W + N1, -N1], [-N2, W + N2]]`` (module doc), so the function is unchanged.
    """
    fused = fuse_models([model, model])
    if noise_std <= 0:
        return fused
    family = model_shape(model)["family"]
    gen = torch.Generator().manual_seed(random_state)
    sd = fused.state_dict()
    with torch.no_grad():
        for name, w in sd.items():
            kind = _is_linear_on_stream(name, family)
            if kind is None or w.ndim != 2:
                continue
            # view every fused map as 2x2 blocks over (input copy, output copy); for Conv1D rows are inputs.
            # GPT-2's c_attn output is [q1 q2 | k1 k2 | v1 v2]: handle each of q, k, v separately.
            groups = 3 if name.endswith("c_attn.weight") else 1
            w_in_first = w if kind == "conv1d" else w.T          # (in, out)
            n_in = w_in_first.shape[0] // 2
            out_chunks = w_in_first.split(w_in_first.shape[1] // groups, dim=1)
            new_chunks = []
            for chunk in out_chunks:
                n_out = chunk.shape[1] // 2
                scale = noise_std * float(chunk[:n_in, :n_out].std())
                chunk = chunk.clone()
                if name == "lm_head.weight":
                    # head: [W/2, W/2] over inputs -> [W/2 + N, W/2 - N]
                    n = torch.randn(chunk.shape[0] // 2, chunk.shape[1], generator=gen, dtype=chunk.dtype) * scale
                    chunk[:n_in] += n
                    chunk[n_in:] -= n
                else:
                    n1 = torch.randn(n_in, n_out, generator=gen, dtype=chunk.dtype) * scale
                    n2 = torch.randn(n_in, n_out, generator=gen, dtype=chunk.dtype) * scale
                    chunk[:n_in, :n_out] += n1      # input copy 1 -> output copy 1
                    chunk[n_in:, :n_out] -= n1      # input copy 2 -> output copy 1
                    chunk[n_in:, n_out:] += n2
                    chunk[:n_in, n_out:] -= n2
                new_chunks.append(chunk)
            merged = torch.cat(new_chunks, dim=1)
            sd[name] = merged if kind == "conv1d" else merged.T.contiguous()
    fused.load_state_dict(sd, strict=True)
    return fused


def stack_layers(model: PreTrainedModel, *, mode: str = "zero") -> PreTrainedModel:
    """Double the depth. ``mode='copy'``: G_stack, layers [0..L-1, 0..L-1] (not exact);
    ``mode='zero'``: after each layer a copy with zeroed output projections (exact)."""
    if mode not in ("copy", "zero"):
        raise GrowthError(f"stack mode must be 'copy' or 'zero', got {mode!r}")
    shape = model_shape(model)
    L = shape["n_layer"]
    config = _new_config(model, width=shape["n_embd"], heads=shape["n_head"], inner=shape["n_inner"], layers=2 * L)
    config.tie_word_embeddings = getattr(model.config, "tie_word_embeddings", False)
    grown = _instantiate(model, config)
    prefix = "transformer.h." if shape["family"] == "gpt2" else "model.layers."
    zero = (("attn.c_proj.", "mlp.c_proj.") if shape["family"] == "gpt2" else ("self_attn.o_proj.", "mlp.down_proj."))
    src = model.state_dict()
    out = dict(grown.state_dict())
    for name in out:
        if name.startswith(prefix):
            layer, rest = name[len(prefix):].split(".", 1)
            j = int(layer)
            if mode == "copy":
                out[name] = src[f"{prefix}{j % L}.{rest}"].clone()
            else:
                out[name] = src[f"{prefix}{j // 2}.{rest}"].clone()
                if j % 2 == 1 and rest.startswith(zero):
                    out[name] = torch.zeros_like(out[name])
        elif name in src:
            out[name] = src[name].clone()
    grown.load_state_dict(out, strict=True)
    return grown.eval()


@torch.no_grad()
def preservation_error(grown: PreTrainedModel, references: list[PreTrainedModel], tokens: np.ndarray) -> dict:
    """Compare ``grown``'s logits with the mean of ``references``' logits on ``tokens``, in float64.

    tokens : int (n, T). Returns max and mean |Δlogit| and the relative deviation ‖Δ‖ / ‖ref‖.
    """
    x = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    g = copy.deepcopy(grown).double().eval()
    got = g(input_ids=x).logits
    want = torch.stack([copy.deepcopy(r).double().eval()(input_ids=x).logits for r in references]).mean(0)
    delta = (got - want).abs()
    return {"max_abs_dlogit": float(delta.max()), "mean_abs_dlogit": float(delta.mean()),
            "relative_deviation": float((got - want).norm() / want.norm()), "dtype": "float64",
            "n_tokens": int(x.numel())}
