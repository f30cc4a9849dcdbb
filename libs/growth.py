"""Growth operators on Hugging Face GPT-2 and Llama models: Deep Fusion, self-fusion, stacking.

Every operator takes trained ``transformers`` models and returns a new model of the same
family and class (``GPT2LMHeadModel`` / ``LlamaForCausalLM``) with a consistent config, so
the grown model saves and loads with ``save_pretrained`` / ``from_pretrained`` like any other.

Notation: a pre-norm decoder keeps a residual stream ``h`` (width ``E``) per token;
``h_0 = embed(x)``; each block adds ``f(norm(h))`` (attention, then MLP); the logits are
``W_head norm_f(h_L)``. ``norm`` is LayerNorm for GPT-2,
``LN(h) = γ ⊙ (h - μ(h)) / sqrt(σ²(h) + ε) + β``, and RMSNorm for Llama,
``RMS(h) = γ ⊙ h / sqrt(mean(h²) + ε)``.

Deep Fusion (:func:`fuse_models`; Mazzawi et al. 2023)
------------------------------------------------------
Components ``m = 1..M`` (same family, vocabulary, context, depth and head size) become one
model of width ``E = Σ E_m`` and ``Σ heads_m`` heads (head size kept, so the attention
scale ``1/sqrt(head_dim)`` and the rotary embedding per head are unchanged). The fused
residual stream is the concatenation ``h = [h_1, ..., h_M]``:

* token and position tables are concatenated along the width;
* every linear map is block-diagonal over the components with zero cross-blocks (GPT-2's
  ``c_attn`` holds ``[q | k | v]`` along its output: each of q, k, v is block-diagonalised
  on its own; Conv1D weights are stored ``(in, out)``, Linear weights ``(out, in)``); heads
  are concatenated, and a head only ever sees its own component's slice;
* norm gains and biases are concatenated;
* the output head is ``[W_1, ..., W_M] / M``, so ``logits = mean_m W_m z_m`` where ``z_m``
  is slice ``m`` of the final norm's output.

Attention, MLPs and the residual additions act slice by slice, so slice ``m`` of the fused
stream equals component ``m``'s stream **exactly as long as every norm acts on each slice as
the component's own norm did**. A norm over the concatenated width computes one statistic
per token from all slices, which couples them:

* LayerNorm: ``μ = Σ_m (E_m/E) μ_m`` and ``σ² = Σ_m (E_m/E)(σ_m² + (μ_m - μ)²)``.
* RMSNorm: ``mean(h²) = Σ_m (E_m/E) r_m²`` with ``r_m² = mean(h_m²)``.

What is exact, and what can be made exact inside the standard model class:

1. **The mean is removable exactly (LayerNorm).** LayerNorm only sees ``h - μ(h)``, so
   replacing a component's stream ``h`` by its centred version ``C h`` (``C = I - 11ᵀ/E``) is
   exactly function-preserving for that component: centre every row of the token and
   position tables and the output of every map that writes to the stream (attention
   ``c_proj`` and MLP ``c_proj``, weights and biases). By induction ``h̃_l = C h_l`` at every
   layer, and ``LN(C h) = LN(h)``. After centring, ``μ_m = 0`` for every slice and the fused
   mean is 0 too: the mean coupling is gone (:func:`center_residual_stream`, applied by
   ``fuse_models(center=True)``, the default for GPT-2). RMSNorm does not centre, so this does
   not apply to Llama.
2. **A constant scale per component is free.** ``norm(c h) = norm(h)`` for ``c > 0`` (up to
   ``ε``), so multiplying a component's embeddings and stream-writing maps by ``c`` scales its
   whole stream by ``c`` and leaves its function unchanged (exactly, when ``ε`` is scaled by
   ``c²`` as well; :func:`scale_residual_stream`).
3. **What remains is a per-token ratio.** With zero-mean slices, the fused norm divides
   slice ``m`` by ``S = sqrt(Σ_k (E_k/E) c_k² r_k² + ε)`` instead of by component ``m``'s own
   ``sqrt(r_m² + ε)``. Fusion is therefore exact **iff the ratios** ``c_k r_k / (c_m r_m)``
   **equal 1 at every norm site and every token**. Identical components (self-fusion,
   fusing copies) have ``r_k = r_m`` everywhere, so they are exact up to float error. For
   different components the ratio ``r_1/r_2`` varies from token to token and from layer to
   layer; one constant ``c_m`` per component (the only freedom, since the residual stream is
   shared by all layers) can equalise it on average but not at every token, and since each
   norm computes a single scalar per token, no choice of weights in the standard class makes
   it exact. ``fuse_models(balance_tokens=...)`` picks ``c_m`` so that the components' mean
   log-RMS over every norm site and token of a calibration set agree; this shrinks the
   deviation but does not remove it: :func:`preservation_error` measures it.

Self-fusion (:func:`self_fuse`; the construction HyperCloning uses for width doubling)
----------------------------------------------------------------------------------
``fuse_models([model] * k)``: exact (case 3 with equal ratios). An exact clone is a saddle:
both copies get the same gradient and stay identical under training, so the model never
uses its extra width. ``noise_std > 0`` adds symmetry-breaking noise that cancels in the
function: in every map on the duplicated stream, the block from input copy ``i`` to output
copy ``o`` becomes ``W δ_oi + N_oi`` with ``Σ_i N_oi = 0``; since every input copy carries the
same ``x``, output copy ``o`` is ``W x + Σ_i N_oi x = W x``. The output head gets the same
(``[W/k + N_1, ..., W/k + N_k]`` with ``Σ N_i = 0``). Backpropagation through ``Nᵀ`` gives the
copies different gradients, so they drift apart. An uneven split of the head as in LEMON
(``[αW, (1-α)W]``) is the special case of a noise proportional to ``W``; a scalar split of
this kind is largely undone by Adam's per-coordinate normalisation, random noise is not.
HyperCloning's noise is about 10 dB below the weights (``noise_std`` ≈ 0.32 of each block's
std); 0.01 is 40 dB below and barely separates the copies in a few hundred steps.
``tiling='full'`` is HyperCloning's tiling: every block of a map on the duplicated stream is
``W / k`` (not ``W`` on the diagonal and 0 elsewhere), so each output copy reads every input
copy; the copies carry the same stream, so the output is again ``W x`` (exact).

Tied heads: :func:`center_residual_stream` and :func:`scale_residual_stream` edit the token
table; with a tied head that edit would reach the logits, so such a model comes back untied
(its head the original table) and its function is unchanged; fusion always unties.

Stacking (:func:`stack_layers`)
-------------------------------
``mode='copy'`` (G_stack, "Stacking Your Transformers" 2024) repeats the whole layer stack
``factor`` times: not function-preserving (each copied block adds its update a second time).
``mode='zero'`` places after every layer ``factor - 1`` copies of it whose stream-writing maps
(attention and MLP output projections, weights and biases) are zero, so each new block adds
exactly 0 to the residual stream: exact. GPT-2's ``scale_attn_by_inverse_layer_idx`` divides
the attention scores by ``layer_idx + 1``; moving a layer changes that, so the query weights
of a moved layer are rescaled by ``(new_idx + 1) / (old_idx + 1)`` to keep it exact.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from transformers import PreTrainedModel

from libs.models import model_shape

__all__ = ["GrowthError", "TILINGS", "check_fusable", "fuse_models", "self_fuse", "noise_std_for_snr_db", "stack_layers",
           "center_residual_stream", "scale_residual_stream", "residual_log_rms", "components_identical",
           "preservation_error", "copy_asymmetry"]


class GrowthError(ValueError):
    """The models cannot be grown or fused as asked."""


# ----------------------------------------------------------------------------------------------
# Where each family keeps what


@dataclasses.dataclass(frozen=True)
class _Map:
    """One linear map inside a block: its name, weight layout and output groups."""

    suffix: str          # e.g. "attn.c_attn"
    conv1d: bool         # GPT-2 Conv1D: weight (in, out); else nn.Linear: weight (out, in)
    groups: int = 1      # equal chunks along the output that are expanded separately (q, k, v)


@dataclasses.dataclass(frozen=True)
class _Layout:
    family: str
    layer_prefix: str
    embeddings: tuple[str, ...]        # (rows, width) tables added into the stream
    layer_norms: tuple[str, ...]
    norm_params: tuple[str, ...]
    final_norm: str
    maps: tuple[_Map, ...]
    writers: tuple[str, ...]           # maps whose output is added to the residual stream
    query: str                         # the map holding the query projection (first group)
    head: str = "lm_head.weight"


_GPT2 = _Layout(
    family="gpt2", layer_prefix="transformer.h.",
    embeddings=("transformer.wte.weight", "transformer.wpe.weight"),
    layer_norms=("ln_1", "ln_2"), norm_params=("weight", "bias"), final_norm="transformer.ln_f",
    maps=(_Map("attn.c_attn", True, 3), _Map("attn.c_proj", True), _Map("mlp.c_fc", True), _Map("mlp.c_proj", True)),
    writers=("attn.c_proj", "mlp.c_proj"), query="attn.c_attn")
_LLAMA = _Layout(
    family="llama", layer_prefix="model.layers.", embeddings=("model.embed_tokens.weight",),
    layer_norms=("input_layernorm", "post_attention_layernorm"), norm_params=("weight",), final_norm="model.norm",
    maps=tuple(_Map(s, False) for s in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")),
    writers=("self_attn.o_proj", "mlp.down_proj"), query="self_attn.q_proj")


def _layout(model: PreTrainedModel) -> _Layout:
    family = model_shape(model)["family"]      # raises on an unsupported family
    return _GPT2 if family == "gpt2" else _LLAMA


def _n_kv_heads(config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _head_dim(model: PreTrainedModel) -> int:
    c = model.config
    if c.model_type == "gpt2":
        return c.n_embd // c.n_head
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


# config fields that must agree for fusion (besides the shape fields), per family
_SAME_CONFIG = {
    "gpt2": ("activation_function", "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
             "reorder_and_upcast_attn", "bos_token_id", "eos_token_id"),
    "llama": ("hidden_act", "rms_norm_eps", "rope_parameters", "rope_theta", "attention_bias", "mlp_bias",
              "pretraining_tp", "bos_token_id", "eos_token_id"),
}


def check_fusable(models: list[PreTrainedModel]) -> None:
    """Raise :class:`GrowthError` naming the first field in which the components differ.

    Deep Fusion needs one family, one vocabulary and context (the tables are concatenated
    along the width, row by row), one depth (blocks are fused pairwise), one head size (fused
    heads keep it), one query-per-key-head ratio (Llama GQA), and the same activation,
    norm epsilon, attention scaling and rotary settings.
    """
    if not isinstance(models, (list, tuple)) or len(models) < 1:
        raise GrowthError(f"fusion needs a non-empty list of models, got {models!r}")
    shapes = [model_shape(m) for m in models]
    first, first_config = shapes[0], models[0].config
    for i, (shape, model) in enumerate(zip(shapes, models)):
        for field in ("family", "vocab_size", "n_positions", "n_layer"):
            if shape[field] != first[field]:
                raise GrowthError(f"cannot fuse: model 0 and model {i} differ in {field} "
                                  f"({first[field]!r} vs {shape[field]!r}); Deep Fusion needs the same {field}")
        if _head_dim(model) != _head_dim(models[0]):
            raise GrowthError(f"cannot fuse: model 0 and model {i} differ in head size (head_dim "
                              f"{_head_dim(models[0])} vs {_head_dim(model)}); fused heads keep the head size, "
                              "so choose widths and head counts with the same width / heads")
        if shape["family"] == "llama":
            rep0 = first_config.num_attention_heads // _n_kv_heads(first_config)
            rep = model.config.num_attention_heads // _n_kv_heads(model.config)
            if rep != rep0:
                raise GrowthError(f"cannot fuse: model 0 and model {i} differ in query heads per key/value head "
                                  f"(num_attention_heads / num_key_value_heads: {rep0} vs {rep})")
        for field in _SAME_CONFIG[shape["family"]]:
            a, b = getattr(first_config, field, None), getattr(model.config, field, None)
            if a != b:
                raise GrowthError(f"cannot fuse: model 0 and model {i} differ in config field {field} "
                                  f"({a!r} vs {b!r}); fused blocks must compute the same function")


def components_identical(models: list[PreTrainedModel]) -> bool:
    """Whether every model has the same weights as the first (then fusion is exact)."""
    first = models[0].state_dict()
    for m in models[1:]:
        sd = m.state_dict()
        if sd.keys() != first.keys() or any(not torch.equal(sd[k], first[k]) for k in first):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# New configs and models


def _grown_config(model: PreTrainedModel, *, width: int, heads: int, kv_heads: int, inner: int, layers: int,
                  tie: bool):
    """A copy of ``model``'s config with the new shape; every derived field set explicitly."""
    config = copy.deepcopy(model.config)
    if config.model_type == "gpt2":
        # n_inner=None would silently mean 4 * n_embd of the *new* width: always set it
        config.n_embd, config.n_head, config.n_inner, config.n_layer = width, heads, inner, layers
    else:
        config.head_dim = _head_dim(model)
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads = width, heads, kv_heads
        config.intermediate_size, config.num_hidden_layers = inner, layers
        if getattr(config, "layer_types", None):
            config.layer_types = [config.layer_types[0]] * layers
    config.tie_word_embeddings = tie
    config._attn_implementation = "eager"
    return config


def _instantiate(model: PreTrainedModel, config, state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A fresh model of ``model``'s class with ``config``, loaded with ``state`` (every key required)."""
    new = type(model)(config).to(dtype=next(model.parameters()).dtype)
    expected = set(new.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:   # a bug in a layout table, never the user's fault
        raise RuntimeError(f"grown state dict mismatch: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    new.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        new.tie_weights()
    new.config._attn_implementation = "eager"
    return new.eval()


def _out_in(w: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """A map's weight as (out, in)."""
    return w.t() if conv1d else w


def _from_out_in(w: torch.Tensor, conv1d: bool) -> torch.Tensor:
    return (w.t() if conv1d else w).contiguous()


def _blockdiag_grouped(weights: list[torch.Tensor], groups: int) -> torch.Tensor:
    """Block-diagonal over components, per output group. weights[m]: (groups * o_m, i_m) -> (Σ, Σ)."""
    per_group = [w.chunk(groups, dim=0) for w in weights]                 # [m][g]: (o_m, i_m)
    return torch.cat([torch.block_diag(*[chunks[g] for chunks in per_group]) for g in range(groups)], dim=0)


def _cat_grouped(biases: list[torch.Tensor], groups: int) -> torch.Tensor:
    per_group = [b.chunk(groups) for b in biases]
    return torch.cat([torch.cat([chunks[g] for chunks in per_group]) for g in range(groups)])


# ----------------------------------------------------------------------------------------------
# Function-preserving reparametrisations of one model


def center_residual_stream(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a LayerNorm (GPT-2) model whose residual stream has zero mean at every token.

    Exactly function-preserving (module doc, point 1): every row of the token and position
    tables and the output of every stream-writing map (weights and biases) is centred. A model
    with a tied head comes back untied, its head the original token table (the centred table
    must not reach the logits).
    """
    layout = _layout(model)
    if layout.family != "gpt2":
        raise GrowthError(f"center_residual_stream needs LayerNorm (gpt2); {layout.family} uses RMSNorm, which "
                          "does not subtract the mean, so centring its stream would change its function")
    sd, config = _untied_state(model, layout)
    for name in layout.embeddings:
        sd[name] -= sd[name].mean(dim=1, keepdim=True)                    # (rows, E)
    for i in range(model_shape(model)["n_layer"]):
        for suffix in layout.writers:
            p = f"{layout.layer_prefix}{i}.{suffix}"
            sd[p + ".weight"] -= sd[p + ".weight"].mean(dim=1, keepdim=True)   # Conv1D (in, E)
            sd[p + ".bias"] -= sd[p + ".bias"].mean()
    return _instantiate(model, config, sd)


def _untied_state(model: PreTrainedModel, layout: _Layout) -> tuple[dict[str, torch.Tensor], object]:
    """A cloned state dict and config copy in which the output head is its own tensor.

    The reparametrisations below edit the token table but must leave the head as it is: with a
    tied head the edit would reach the logits (``W_head z`` with an edited ``W_head``), and on
    load ``tie_weights`` would overwrite the head with the edited table. So a tied model comes
    back untied, its head a copy of the original token table: exactly the same function, one
    (vocab x width) matrix more to train.
    """
    state = model.state_dict()
    sd = {k: v.clone() for k, v in state.items()}
    config = copy.deepcopy(model.config)
    if getattr(config, "tie_word_embeddings", False):
        sd[layout.head] = state[layout.embeddings[0]].clone()
        config.tie_word_embeddings = False
    return sd, config


def scale_residual_stream(model: PreTrainedModel, factor: float, *, scale_eps: bool = True) -> PreTrainedModel:
    """A copy of ``model`` whose residual stream is ``factor`` times larger, with the same function.

    Multiplies the embedding tables and every stream-writing map (weights and biases) by
    ``factor``; every norm divides the factor out again. Exact when ``scale_eps`` (the norm
    epsilon is multiplied by ``factor²``), exact up to ``ε / σ²`` otherwise. A model with a tied
    head comes back untied, its head the original token table (the scaled table must not reach
    the logits).
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise GrowthError(f"factor must be a positive finite number, got {factor!r}")
    layout = _layout(model)
    sd, config = _untied_state(model, layout)
    for name in layout.embeddings:
        sd[name] *= factor
    for i in range(model_shape(model)["n_layer"]):
        for suffix in layout.writers:
            for param in ("weight", "bias"):
                name = f"{layout.layer_prefix}{i}.{suffix}.{param}"
                if name in sd:
                    sd[name] *= factor
    if scale_eps:
        field = "layer_norm_epsilon" if layout.family == "gpt2" else "rms_norm_eps"
        setattr(config, field, getattr(config, field) * factor ** 2)
    return _instantiate(model, config, sd)


def _norm_modules(model: PreTrainedModel, layout: _Layout) -> list[torch.nn.Module]:
    modules = dict(model.named_modules())
    n_layer = model_shape(model)["n_layer"]
    names = [f"{layout.layer_prefix}{i}.{norm}" for i in range(n_layer) for norm in layout.layer_norms]
    return [modules[n] for n in names + [layout.final_norm]]


@torch.no_grad()
def residual_log_rms(model: PreTrainedModel, tokens: np.ndarray, lengths: np.ndarray | None = None) -> float:
    """Mean over every norm site and valid token of ``log`` of the stream's RMS at the norm's input.

    The RMS is taken after removing the mean for LayerNorm models (what LayerNorm divides by)
    and as is for RMSNorm models. tokens: int (n, T); lengths: (n,) valid tokens per row.
    """
    layout = _layout(model)
    x, mask = _as_batch(tokens, lengths)
    logs: list[torch.Tensor] = []

    def hook(_module, args):
        h = args[0].double()                                              # (B, T, E)
        if layout.family == "gpt2":
            h = h - h.mean(-1, keepdim=True)
        logs.append(torch.log(h.pow(2).mean(-1).clamp_min(1e-300)).mul(0.5)[mask])   # (n_valid,)

    handles = [m.register_forward_pre_hook(hook) for m in _norm_modules(model, layout)]
    try:
        model.eval()(input_ids=x)
    finally:
        for h in handles:
            h.remove()
    return float(torch.cat(logs).mean())


# ----------------------------------------------------------------------------------------------
# Deep Fusion


def fuse_models(models: list[PreTrainedModel], *, center: bool | None = None,
                balance_tokens: np.ndarray | None = None, balance_lengths: np.ndarray | None = None
                ) -> PreTrainedModel:
    """Deep Fusion of ``models`` into one model whose width, heads and MLP width are the sums.

    Parameters
    ----------
    models : M models of one family with equal vocabulary, context, depth, head size
        (:func:`check_fusable` says which field differs otherwise). Tied or untied heads.
    center : centre each LayerNorm component's residual stream first (exact per component;
        removes the mean coupling of the fused LayerNorms; module doc, point 1). ``None``:
        on for GPT-2; must be off for Llama (RMSNorm).
    balance_tokens : int (n, T) calibration rows. When given, each component's residual
        stream is rescaled by a constant (exact per component) so that the components'
        mean log-RMS at the norm inputs agree on these rows (module doc, point 3).
    balance_lengths : (n,) valid tokens per calibration row (default: all).

    Returns
    -------
    A ``type(models[0])`` model (eval mode, untied head) with ``n_embd = Σ E_m``,
    ``n_head = Σ heads_m``, ``n_inner = Σ inner_m``; its logits are exactly the mean of the
    components' logits when the components are identical, and deviate by the norm coupling
    otherwise (module doc; measure with :func:`preservation_error`).
    """
    check_fusable(models)
    layout = _layout(models[0])
    if center is None:
        center = layout.family == "gpt2"
    if center and layout.family != "gpt2":
        raise GrowthError("center=True needs LayerNorm models (gpt2); Llama's RMSNorm does not subtract the mean")
    parts = list(models)
    if center:
        parts = [center_residual_stream(m) for m in parts]
    if balance_tokens is not None and len(parts) > 1 and not components_identical(parts):
        logs = np.array([residual_log_rms(m, balance_tokens, balance_lengths) for m in parts])
        factors = np.exp(logs.mean() - logs)
        parts = [scale_residual_stream(m, float(f), scale_eps=False) for m, f in zip(parts, factors)]
    shapes = [model_shape(m) for m in parts]
    config = _grown_config(parts[0], width=sum(s["n_embd"] for s in shapes), heads=sum(s["n_head"] for s in shapes),
                           kv_heads=sum(_n_kv_heads(m.config) for m in parts) if layout.family == "llama" else 0,
                           inner=sum(s["n_inner"] for s in shapes), layers=shapes[0]["n_layer"], tie=False)
    with torch.no_grad():
        state = _fuse_state([m.state_dict() for m in parts], layout, shapes[0]["n_layer"])
    return _instantiate(parts[0], config, state)


def _fuse_state(sds: list[dict[str, torch.Tensor]], layout: _Layout, n_layer: int) -> dict[str, torch.Tensor]:
    M = len(sds)
    out = {name: torch.cat([sd[name] for sd in sds], dim=1) for name in layout.embeddings}   # (rows, Σ E_m)
    norm_names = [f"{layout.layer_prefix}{i}.{n}" for i in range(n_layer) for n in layout.layer_norms]
    for norm in norm_names + [layout.final_norm]:
        for param in layout.norm_params:
            out[f"{norm}.{param}"] = torch.cat([sd[f"{norm}.{param}"] for sd in sds])
    for i in range(n_layer):
        for mp in layout.maps:
            name = f"{layout.layer_prefix}{i}.{mp.suffix}"
            weights = [_out_in(sd[name + ".weight"], mp.conv1d) for sd in sds]             # (out_m, in_m)
            out[name + ".weight"] = _from_out_in(_blockdiag_grouped(weights, mp.groups), mp.conv1d)
            if name + ".bias" in sds[0]:
                out[name + ".bias"] = _cat_grouped([sd[name + ".bias"] for sd in sds], mp.groups)
    out[layout.head] = torch.cat([sd[layout.head] for sd in sds], dim=1) / M                   # (V, Σ E_m)
    return out


# ----------------------------------------------------------------------------------------------
# Self-fusion with symmetry breaking


TILINGS = ("diagonal", "full")


def noise_std_for_snr_db(snr_db: float) -> float:
    """The ``noise_std`` whose noise power lies ``snr_db`` decibels below the signal's: ``10^(-dB/20)``.

    HyperCloning's symmetry-breaking noise is about 10 dB below the weights (``noise_std`` ≈ 0.32);
    0.01 is 40 dB below.
    """
    if not math.isfinite(snr_db):
        raise GrowthError(f"snr_db must be finite, got {snr_db!r}")
    return 10.0 ** (-snr_db / 20.0)


def self_fuse(model: PreTrainedModel, *, n_copies: int = 2, noise_std: float = 0.0, tiling: str = "diagonal",
              random_state: int | None = 0) -> PreTrainedModel:
    """Multiply ``model``'s width by ``n_copies`` by fusing it with itself; exactly function-preserving.

    Parameters
    ----------
    n_copies : how many copies (2 doubles the width).
    noise_std : symmetry-breaking noise that cancels in the function (module doc), as a
        fraction of the standard deviation of each weight block it is added to (power ratio
        ``noise_std²``: 0.32 is HyperCloning's ~10 dB below the signal, 0.01 is 40 dB;
        :func:`noise_std_for_snr_db`). 0 gives an exact clone, whose copies stay identical
        under training unless ``tiling='full'`` mixes them.
    tiling : ``'diagonal'`` (Deep Fusion: each copy reads only its own slice, block ``W`` on the
        diagonal and 0 elsewhere) or ``'full'`` (HyperCloning: every block ``W / n_copies``, so
        each output copy reads every input copy; since the copies carry the same stream,
        ``Σ_i (W / n) x = W x``: exact as well).
    random_state : seed of the noise.
    """
    if not isinstance(n_copies, int) or n_copies < 2:
        raise GrowthError(f"n_copies must be an integer >= 2, got {n_copies!r}")
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise GrowthError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if tiling not in TILINGS:
        raise GrowthError(f"tiling must be one of {TILINGS}, got {tiling!r}")
    fused = fuse_models([model] * n_copies, center=False)
    if noise_std == 0 and tiling == "diagonal":
        return fused
    layout = _layout(model)
    generator = torch.Generator().manual_seed(0 if random_state is None else int(random_state))
    sd = {k: v.clone() for k, v in fused.state_dict().items()}
    with torch.no_grad():
        for i in range(model_shape(model)["n_layer"]):
            for mp in layout.maps:
                name = f"{layout.layer_prefix}{i}.{mp.suffix}.weight"
                w = _out_in(sd[name], mp.conv1d)                                      # (g*k*o, k*i)
                if tiling == "full":
                    w = _tile_full(w, mp.groups, n_copies)
                if noise_std > 0:
                    w = _add_cancelling_noise(w, mp.groups, n_copies, n_copies, noise_std, generator)
                sd[name] = _from_out_in(w, mp.conv1d)
        if noise_std > 0:
            sd[layout.head] = _add_cancelling_noise(sd[layout.head], 1, 1, n_copies, noise_std, generator)
    return _instantiate(fused, copy.deepcopy(fused.config), sd)


def _tile_full(w: torch.Tensor, groups: int, copies: int) -> torch.Tensor:
    """Block-diagonal (out, in) weight over ``copies`` -> every block the diagonal block / copies."""
    o, i = w.shape[0] // (groups * copies), w.shape[1] // copies
    blocks = w.reshape(groups, copies, o, copies, i)
    diag = blocks[:, :1, :, :1, :] / copies                                   # (g, 1, o, 1, i)
    return diag.expand(groups, copies, o, copies, i).reshape(w.shape).clone()


def _add_cancelling_noise(w: torch.Tensor, groups: int, out_copies: int, in_copies: int, noise_std: float,
                          generator: torch.Generator) -> torch.Tensor:
    """Add to the (out, in) weight ``w`` noise whose sum over the input copies is zero.

    ``w`` is viewed as (groups, out_copies, o, in_copies, i); the noise of each group is
    scaled by ``noise_std`` x the std of that group's diagonal block (the original weight).
    """
    g_, o_total, i_total = groups, w.shape[0], w.shape[1]
    o, i = o_total // (groups * out_copies), i_total // in_copies
    blocks = w.reshape(g_, out_copies, o, in_copies, i)
    scale = blocks[:, 0, :, 0, :].reshape(g_, -1).std(dim=1)                 # (groups,) std of W (or W / k)
    noise = torch.randn(blocks.shape, generator=generator, dtype=torch.float64)
    noise = (noise - noise.mean(dim=3, keepdim=True)) * math.sqrt(in_copies / (in_copies - 1))
    noise = noise.to(w.dtype) * (noise_std * scale).view(g_, 1, 1, 1, 1)
    # recompute one block so that the sum over input copies is zero in w's dtype too
    noise[:, :, :, -1, :] = -noise[:, :, :, :-1, :].sum(dim=3)
    return (blocks + noise).reshape(o_total, i_total)


@torch.no_grad()
def copy_asymmetry(model: PreTrainedModel, tokens: np.ndarray, *, n_copies: int = 2,
                   lengths: np.ndarray | None = None) -> float:
    """How far a self-fused model's copies have drifted apart: 0 while they are identical.

    Over every hidden state (embeddings and each block's output) and valid token:
    ``||h_copy - mean over copies|| / ||h||``, where the width is split into ``n_copies``
    equal slices. An exact clone trained without symmetry breaking stays at 0.
    """
    x, mask = _as_batch(tokens, lengths)
    hidden = model.eval()(input_ids=x, output_hidden_states=True).hidden_states[:-1]   # pre-final-norm states
    num = den = 0.0
    for h in hidden:                                                                   # (B, T, E)
        h = h.double()[mask]                                                           # (n_valid, E)
        slices = h.reshape(h.shape[0], n_copies, -1)
        num += float((slices - slices.mean(1, keepdim=True)).pow(2).sum())
        den += float(h.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# Depth: stacking


def stack_layers(model: PreTrainedModel, *, mode: str = "zero", factor: int = 2) -> PreTrainedModel:
    """Multiply ``model``'s depth by ``factor``.

    mode : ``'copy'``: G_stack, layers ``[0..L-1] * factor`` (not function-preserving);
        ``'zero'``: each layer followed by ``factor - 1`` copies of itself whose attention and
        MLP output projections are zero (exact: the new blocks add nothing to the stream).
    """
    if mode not in ("copy", "zero"):
        raise GrowthError(f"stack mode must be 'copy' or 'zero', got {mode!r}")
    if not isinstance(factor, int) or factor < 2:
        raise GrowthError(f"stack factor must be an integer >= 2, got {factor!r}")
    layout = _layout(model)
    shape = model_shape(model)
    L = shape["n_layer"]
    tie = bool(getattr(model.config, "tie_word_embeddings", False))
    config = _grown_config(model, width=shape["n_embd"], heads=shape["n_head"], kv_heads=_n_kv_heads(model.config)
                           if layout.family == "llama" else 0, inner=shape["n_inner"], layers=factor * L, tie=tie)
    inverse_idx = layout.family == "gpt2" and bool(getattr(model.config, "scale_attn_by_inverse_layer_idx", False))
    src = model.state_dict()
    out = {k: v.clone() for k, v in src.items() if not k.startswith(layout.layer_prefix)}
    for new_idx in range(factor * L):
        old_idx, is_new = (new_idx % L, new_idx >= L) if mode == "copy" else (new_idx // factor, new_idx % factor > 0)
        old_prefix, new_prefix = f"{layout.layer_prefix}{old_idx}.", f"{layout.layer_prefix}{new_idx}."
        for name, value in src.items():
            if not name.startswith(old_prefix):
                continue
            rest = name[len(old_prefix):]
            value = value.clone()
            if mode == "zero" and is_new and rest.startswith(tuple(w + "." for w in layout.writers)):
                value.zero_()
            if inverse_idx and rest.startswith(layout.query + ".") and new_idx != old_idx:
                # scores are divided by (layer_idx + 1): rescale the queries (first third of c_attn's outputs)
                ratio = (new_idx + 1) / (old_idx + 1)
                q = value.shape[-1] // 3
                value[..., :q] *= ratio
            out[new_prefix + rest] = value
    return _instantiate(model, config, out)


# ----------------------------------------------------------------------------------------------
# Measuring function preservation


def _as_batch(tokens: np.ndarray, lengths: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.asarray(tokens)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty int array (n, T), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {x.dtype}")
    xt = torch.as_tensor(x, dtype=torch.long)
    if lengths is None:
        return xt, torch.ones(x.shape, dtype=torch.bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (x.shape[0],) or (lengths < 1).any():
        raise ValueError(f"lengths must be (n,) = ({x.shape[0]},) with values >= 1, got shape {lengths.shape}")
    return xt, torch.arange(x.shape[1])[None, :] < torch.as_tensor(lengths, dtype=torch.long)[:, None]


def _nll(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL over valid targets, and their count. logits (B, T, V), x (B, T)."""
    target_mask = mask[:, 1:]                                                  # (B, T-1)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)                          # (B, T-1)
    return float(nll[target_mask].sum()), int(target_mask.sum())


@torch.no_grad()
def preservation_error(grown: PreTrainedModel, references: list[PreTrainedModel], tokens: np.ndarray, *,
                       lengths: np.ndarray | None = None, max_batch_elements: int = 2 ** 24) -> dict:
    """Compare ``grown``'s logits with the mean of ``references``' logits on ``tokens``, in float64.

    Parameters
    ----------
    grown : the grown model. references : the models it should reproduce (the mean of their
        logits is the reference; one model for self-fusion and stacking).
    tokens : int (n, T) rows of tokens. lengths : (n,) valid tokens per row; only valid
        positions count (default: all).
    max_batch_elements : rows are processed in batches of at most this many logits.

    Returns
    -------
    dict with ``max_abs_dlogit``, ``mean_abs_dlogit``, ``relative_deviation`` (‖Δ‖ / ‖ref‖ over
    every valid position and vocabulary entry) in float64; ``max_abs_dlogit_float32`` (the
    same models run in float32); ``per_position_max_abs`` (list, max over the vocabulary at
    each valid position); next-token NLL of the grown model, of the reference (softmax of
    the mean logits) and of each reference model; ``component_spread`` (mean over references
    of ‖logits_m - ref‖ / ‖ref‖: how different the components are, for scale); counts.
    """
    if not references:
        raise ValueError("preservation_error needs at least one reference model")
    x_all, mask_all = _as_batch(tokens, lengths)
    n, T = x_all.shape
    V = grown.config.vocab_size
    rows = max(1, max_batch_elements // (T * V))
    grown64 = copy.deepcopy(grown).double().eval()
    refs64 = [copy.deepcopy(r).double().eval() for r in references]
    grown.eval()
    for r in references:
        r.eval()
    per_position, sq_diff, sq_ref, abs_sum = [], 0.0, 0.0, 0.0
    spread_sq = [0.0] * len(references)
    max32 = 0.0
    nll_grown = nll_ref = 0.0
    nll_comp = [0.0] * len(references)
    n_targets = 0
    for start in range(0, n, rows):
        x, mask = x_all[start:start + rows], mask_all[start:start + rows]
        comps = [r(input_ids=x).logits for r in refs64]                          # M x (B, T, V)
        want = torch.stack(comps).mean(0)
        got = grown64(input_ids=x).logits
        delta = (got - want)[mask]                                              # (n_valid, V)
        per_position.append(delta.abs().amax(-1))
        sq_diff += float(delta.pow(2).sum())
        abs_sum += float(delta.abs().sum())
        sq_ref += float(want[mask].pow(2).sum())
        for j, c in enumerate(comps):
            spread_sq[j] += float((c - want)[mask].pow(2).sum())
        got32 = grown(input_ids=x).logits
        want32 = torch.stack([r(input_ids=x).logits for r in references]).mean(0)
        max32 = max(max32, float((got32 - want32)[mask].abs().max()))
        s, k = _nll(got, x, mask)
        nll_grown += s
        nll_ref += _nll(want, x, mask)[0]
        for j, c in enumerate(comps):
            nll_comp[j] += _nll(c, x, mask)[0]
        n_targets += k
    per_position = torch.cat(per_position)
    n_positions = int(mask_all.sum())
    ref_norm = math.sqrt(sq_ref)
    return {
        "max_abs_dlogit": float(per_position.max()),
        "mean_abs_dlogit": abs_sum / (n_positions * V),
        "relative_deviation": math.sqrt(sq_diff) / ref_norm if ref_norm > 0 else math.nan,
        "max_abs_dlogit_float32": max32,
        "dtype": "float64",
        "per_position_max_abs": per_position.tolist(),
        "nll_grown": nll_grown / max(n_targets, 1),
        "nll_reference": nll_ref / max(n_targets, 1),
        "nll_components": [v / max(n_targets, 1) for v in nll_comp],
        "component_spread": (float(np.mean(np.sqrt(spread_sq))) / ref_norm) if ref_norm > 0 else math.nan,
        "n_positions": n_positions,
        "n_rows": int(n),
    }
