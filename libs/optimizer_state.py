"""AdamW moments as plain tensors: taken from a trained model's optimizer, carried through growth, given to a new one.

A grown model normally starts with a fresh AdamW state (zero moments, step 0), while its
components ended their pretraining with running estimates of the gradient's mean
(``exp_avg``) and square (``exp_avg_sq``). This module keeps those estimates by parameter
name, so they can be

* taken from a finished run (:func:`extract_moments`, what ``train_model(keep_moments=True)``
  returns),
* stored as one safetensors file (:func:`moments_to_files` / :func:`moments_from_files`,
  the same ``{file name: bytes}`` shape as model files),
* mapped through a growth operator (:func:`grow_moments`): the operator is applied to copies
  of the components whose parameters hold the moments instead of the weights, so every
  entry of the grown model that is a (scaled) copy of a component entry gets that entry's
  moments. ``exp_avg`` goes through as is, ``exp_avg_sq`` through its square root (a weight
  scaled by ``c`` gets ``c · m`` and ``c² · v``, so Adam's ratio ``m / sqrt(v)`` is that of the
  component). Entries the operator creates from nothing (the zero off-diagonal blocks of Deep
  Fusion, the zeroed projections of ``stack_zero``) get ``m = 0`` and ``v`` = the mean ``v`` of
  the copied entries of the same tensor, so their first updates have the size of their
  neighbours' instead of Adam's full-size first step. The operator must be the noise-free,
  linear form of the growth that built the model (no residual-stream centering, no
  symmetry-breaking noise: ``steps.grow`` passes that form); the moments of the centred or
  noisy weights are approximated by those of the weights they came from.
* given to a new optimizer (:func:`apply_moments`) before its first step, with the
  components' step count (so Adam's bias correction treats them as the running estimates
  they are).

Tensors are keyed ``exp_avg.<state name>`` and ``exp_avg_sq.<state name>`` with the model's
``state_dict`` names (a tied embedding appears under both of its names), plus a 0-d
``step``. Nothing here imports Metaflow.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

__all__ = ["MOMENTS_FILE", "extract_moments", "apply_moments", "moments_to_files", "moments_from_files",
           "grow_moments", "moment_step"]

MOMENTS_FILE = "adam_moments.safetensors"


def _param_names(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """state_dict name -> parameter, every name of a tied parameter included (buffers left out)."""
    params = {id(p) for p in model.parameters()}
    return {name: t for name, t in model.state_dict(keep_vars=True).items() if id(t) in params}


def extract_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The AdamW moments of ``model``'s parameters under ``optimizer`` (CPU float32 copies) and its step count.

    Raises ``ValueError`` when the optimizer has not taken a step (it has no moments yet).
    """
    out: dict[str, torch.Tensor] = {}
    steps = []
    for name, param in _param_names(model).items():
        state = optimizer.state.get(param)
        if not state or "exp_avg" not in state:
            if param.requires_grad:
                raise ValueError(f"the optimizer holds no moments for {name!r}: extract them after at least one "
                                 "optimizer step")
            continue
        out[f"exp_avg.{name}"] = state["exp_avg"].detach().float().cpu().clone()
        out[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().float().cpu().clone()
        steps.append(float(state["step"]))
    if not steps:
        raise ValueError("the model has no trainable parameters with optimizer state")
    out["step"] = torch.tensor(min(steps), dtype=torch.float32)
    return out


def moment_step(moments: dict[str, torch.Tensor]) -> int:
    """The optimizer step count the moments were taken at."""
    if "step" not in moments:
        raise ValueError("these moments carry no 'step' entry; they were not made by extract_moments/grow_moments")
    return int(moments["step"])


def apply_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, moments: dict[str, torch.Tensor]) -> None:
    """Give ``optimizer`` (AdamW, not yet stepped) the ``moments`` of ``model``'s parameters.

    Every trainable parameter needs its two moments of its own shape; a missing or misshapen one
    is a ``ValueError`` that names it (the moments belong to another model: grow them with the
    same operator as the model). Devices and the fused/capturable step placement follow
    ``optimizer.load_state_dict``.
    """
    step = moment_step(moments)
    index = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            index[id(p)] = len(index)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, param in _param_names(model).items():
        if id(param) not in index or index[id(param)] in state:
            continue
        m, v = moments.get(f"exp_avg.{name}"), moments.get(f"exp_avg_sq.{name}")
        if m is None or v is None:
            raise ValueError(f"the carried AdamW moments have no entry for parameter {name!r}; they were taken "
                             "from a different model (grow them with the operator that built this one)")
        if m.shape != param.shape or v.shape != param.shape:
            raise ValueError(f"the carried AdamW moments of {name!r} have shape {tuple(m.shape)}, the parameter "
                             f"{tuple(param.shape)}; they were taken from a different model")
        state[index[id(param)]] = {"step": torch.tensor(float(step), dtype=torch.float32),
                                   "exp_avg": m.to(param.dtype).clone(), "exp_avg_sq": v.to(param.dtype).clone()}
    missing = [i for i in range(len(index)) if i not in state]
    if missing:
        raise ValueError(f"{len(missing)} optimizer parameters are not parameters of the model; give apply_moments "
                         "the model the optimizer was built for")
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


def moments_to_files(moments: dict[str, torch.Tensor]) -> dict[str, bytes]:
    """``{MOMENTS_FILE: safetensors bytes}``."""
    from safetensors.torch import save

    return {MOMENTS_FILE: save({k: v.contiguous() for k, v in moments.items()})}


def moments_from_files(files: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """The moments stored by :func:`moments_to_files` (never unpickled)."""
    from safetensors.torch import load

    if not files or MOMENTS_FILE not in files:
        raise ValueError(f"optimizer-moment files must contain {MOMENTS_FILE} (got {sorted(files) if files else 'nothing'})")
    return load(files[MOMENTS_FILE])


def _holding(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``model`` whose parameters hold ``tensors`` (by state name) instead of its weights."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in _param_names(out).items():
            param.copy_(tensors[name])
    return out


def grow_moments(operator: Callable[[list[torch.nn.Module]], torch.nn.Module], models: list[torch.nn.Module],
                 moments: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The moments of the model ``operator(models)``, from each component's ``moments`` (module doc).

    ``operator`` must be linear in the weights (noise-free, no centering). The step count is the
    smallest of the components'.
    """
    if len(models) != len(moments) or not models:
        raise ValueError(f"grow_moments needs one set of moments per component: {len(models)} models, "
                         f"{len(moments)} sets")
    names = [list(_param_names(m)) for m in models]
    for i, (ns, mo) in enumerate(zip(names, moments)):
        lost = [n for n in ns if f"exp_avg.{n}" not in mo or f"exp_avg_sq.{n}" not in mo]
        if lost:
            raise ValueError(f"component {i}'s moments lack {lost[:3]}{' ...' if len(lost) > 3 else ''}: they were "
                             "taken from a different model")

    def through(pick: Callable[[dict[str, torch.Tensor], str], torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = [_holding(m, {n: pick(mo, n) for n in ns}) for m, mo, ns in zip(models, moments, names)]
        grown = operator(parts)
        return {n: p.detach().clone() for n, p in _param_names(grown).items()}

    exp_avg = through(lambda mo, n: mo[f"exp_avg.{n}"])
    root = through(lambda mo, n: mo[f"exp_avg_sq.{n}"].clamp_min(0).sqrt())
    copied = through(lambda mo, n: torch.ones_like(mo[f"exp_avg.{n}"]))
    all_v = torch.cat([(root[n] ** 2)[copied[n] != 0] for n in root])
    fallback = float(all_v.mean()) if all_v.numel() else 0.0
    out: dict[str, torch.Tensor] = {}
    for n in root:
        mask = copied[n] != 0
        v = root[n] ** 2
        fill = float(v[mask].mean()) if mask.any() else fallback
        out[f"exp_avg.{n}"] = torch.where(mask, exp_avg[n], torch.zeros_like(exp_avg[n]))
        out[f"exp_avg_sq.{n}"] = torch.where(mask, v, torch.full_like(v, fill))
    out["step"] = torch.tensor(float(min(moment_step(mo) for mo in moments)), dtype=torch.float32)
    return out
