"""Stage 3: grow the small models into the large model's initialization, and measure what is preserved."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from libs.growth import fuse_models, preservation_error, self_fuse, stack_layers
from libs.models import count_parameters, model_from_files, model_shape, model_to_files
from libs.optimizer_state import grow_moments, moments_from_files, moments_to_files
from libs.report import Markdown, Table
from libs.schema import option

__all__ = ["GrowConfig", "GrowResult", "run", "report", "EXACT"]

METHODS = ("fuse", "self_fuse", "stack", "stack_zero")
EXACT = {"fuse": False, "self_fuse": True, "stack": False, "stack_zero": True}  # for different components


@dataclasses.dataclass(frozen=True)
class GrowConfig:
    """Which growth operator, and its settings."""

    method: str = option("fuse", "fuse (Deep Fusion of all small models), self_fuse (the first small model "
                         "fused with itself: width x2), stack (G_stack: depth x2), stack_zero (depth x2 with "
                         "zero-output new layers: exact)", choices=METHODS)
    noise_std: float = option(0.32, "self_fuse: symmetry-breaking noise that cancels in the function, relative "
                              "to the std of each weight block it is added to; 0.32 is HyperCloning's strength "
                              "(noise power ~10 dB below the weights), 0.01 is 40 dB below, 0 = an exact clone",
                              min=0.0)
    tiling: str = option("diagonal", "self_fuse: 'diagonal' (Deep Fusion: each copy reads only its own slice) or "
                         "'full' (HyperCloning: every block W / n_copies, each copy reads all); both exact",
                         choices=("diagonal", "full"))
    check_rows: int = option(8, "validation rows on which function preservation is measured (float64)", min=1)


@dataclasses.dataclass(frozen=True)
class GrowResult:
    model_files: dict
    method: str
    components: list[str]
    shape_before: list[dict]
    shape_after: dict
    preservation: dict
    n_params: int
    seconds: float
    # the same operator applied to the components' random initializations: the reference from which the grown
    # model's distance-from-init gap features are measured, as every LM-zoo model's is from its random init
    # (None when the components' initializations were not given)
    reference_init_files: dict | None = None
    # the components' final AdamW moments mapped through the same operator (libs.optimizer_state.grow_moments):
    # what train_large.grown_optimizer = 'carry' starts the grown arm's optimizer from (None when not given)
    moment_files: dict | None = None


def _apply(cfg: GrowConfig, models: list, seed: int, *, linear: bool = False):
    """``cfg.method`` applied to ``models``: the grown model and the components it preserves.

    ``linear``: the operator's noise-free form without residual-stream centering (linear in the
    weights), through which :func:`libs.optimizer_state.grow_moments` maps the optimizer moments.
    """
    if cfg.method == "fuse":
        if len(models) < 2:
            raise ValueError("grow.method='fuse' needs at least two small models; list more in "
                             "pretrain_small.models or use 'self_fuse'")
        return (fuse_models(models, center=False) if linear else fuse_models(models)), models
    if cfg.method == "self_fuse":
        return self_fuse(models[0], noise_std=0.0 if linear else cfg.noise_std, tiling=cfg.tiling,
                         random_state=seed), models[:1]
    return stack_layers(models[0], mode="copy" if cfg.method == "stack" else "zero"), models[:1]


def run(cfg: GrowConfig, *, small_models: dict[str, dict[str, bytes]], check_tokens: np.ndarray,
        seed: int, small_inits: dict[str, dict[str, bytes] | None] | None = None,
        small_moments: dict[str, dict[str, bytes] | None] | None = None) -> GrowResult:
    """Grow ``small_models`` (name -> HF files) with ``cfg.method``; measure function preservation on
    ``check_tokens`` (int (n, L) rows of real tokens) against the mean of the components' logits.

    ``small_inits`` (name -> the HF files of each small model's random initialization), when
    given for every component, are grown by the same operator with the same seed into
    ``result.reference_init_files``. ``small_moments`` (name -> each small model's final AdamW
    moments, :mod:`libs.optimizer_state` files), when given for every component, are mapped
    through the operator's linear form into ``result.moment_files``.
    """
    t0 = time.perf_counter()
    if not small_models:
        raise ValueError("grow needs at least one small model")
    names = list(small_models)
    models = [model_from_files(small_models[n]) for n in names]
    grown, refs = _apply(cfg, models, seed)
    names = names[:len(refs)]
    reference = None
    if small_inits and all(small_inits.get(n) for n in names):
        inits = [model_from_files(small_inits[n]) for n in names]
        reference = model_to_files(_apply(cfg, inits, seed)[0])
    moment_files = None
    if small_moments and all(small_moments.get(n) for n in names):
        moments = [moments_from_files(small_moments[n]) for n in names]
        grown_moments = grow_moments(lambda parts: _apply(cfg, parts, seed, linear=True)[0], models[:len(names)],
                                     moments)
        moment_files = moments_to_files(grown_moments)
    rows = np.asarray(check_tokens)[:cfg.check_rows]
    preservation = preservation_error(grown, refs, rows)
    preservation["reference"] = ("mean of the components' logits" if len(refs) > 1
                                 else f"the logits of {names[0]}")
    preservation["exact_expected"] = EXACT[cfg.method] or (cfg.method == "fuse" and len(set(
        tuple(sorted(small_models[n].items())) for n in names)) == 1)
    return GrowResult(model_files=model_to_files(grown), method=cfg.method, components=names,
                      shape_before=[model_shape(m) for m in models], shape_after=model_shape(grown),
                      preservation=preservation, n_params=count_parameters(grown), seconds=time.perf_counter() - t0,
                      reference_init_files=reference, moment_files=moment_files)


def report(result: GrowResult) -> list:
    p = result.preservation
    verdict = ("exact (float error only)" if p["max_abs_dlogit"] <= 1e-5 else
               "not exact: normalization over the fused width couples the components (see libs/growth.py)")
    keys = ["family", "n_layer", "n_embd", "n_head", "n_inner", "vocab_size"]
    rows = [[name] + [s[k] for k in keys] for name, s in zip(result.components, result.shape_before)]
    rows.append(["grown"] + [result.shape_after[k] for k in keys])
    return [
        Markdown(f"## Grown with `{result.method}` from {', '.join(result.components)}\n\n"
                 f"Function preservation against {p['reference']} on {p.get('n_positions', p.get('n_tokens'))} positions, float64: "
                 f"**max |Δlogit| = {p['max_abs_dlogit']:.3e}**, mean {p['mean_abs_dlogit']:.3e}, relative deviation "
                 f"{p['relative_deviation']:.3e}: {verdict}. {result.n_params:,} parameters."),
        Table(["model"] + keys, rows, title="Shapes before and after"),
    ]
