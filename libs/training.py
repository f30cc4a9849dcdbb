"""The one training loop: every stage that trains a language model calls :func:`train_model`.

AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay,
gradient clipping and accumulation, per-example loss weights, periodic validation that
yields a loss curve, optional bf16 autocast and ``torch.compile`` on CUDA, checkpoints
that let a crashed step continue where it stopped, and a clear error on a NaN/inf loss.

Data follows the token contract of the ``prepare`` stage: ``tokens`` is an int32 array
``(n, seq_len + 1)`` right-padded, ``lengths`` the number of valid tokens in each row.
Row ``i`` is one training example; its loss is the mean next-token NLL over its valid
positions; a batch's loss is ``mean_i(w_i * loss_i)`` with the weights normalised to
mean 1 over the training set, so a weighted subset trains on an unbiased estimate of
the full corpus loss. Weights are applied here, once: batches are drawn uniformly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from libs.checkpoints import finite_or_none, load_latest_checkpoint, prune_checkpoints, remove_checkpoints, \
    save_checkpoint
from libs.schema import option

__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "train_model",
           "per_example_loss", "resolve_device", "lr_at_step", "final_lr", "post_growth_config"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run (all stages share this shape)."""

    steps: int = option(200, "optimizer steps", min=1)
    batch_size: int = option(16, "examples per micro-batch", min=1)
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", min=1)
    lr: float = option(3e-3, "peak learning rate", min=0.0, min_exclusive=True)
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of lr (cosine floor)", min=0.0, max=1.0)
    warmup_steps: int = option(20, "linear warmup steps (restarted for every run, grown models included)", min=0)
    decay_steps: int = option(0, "steps of the cosine decay after the warmup; 0 = until the last step. Shorter "
                              "decays faster (LEMON's schedule after growth) and then holds the floor "
                              "min_lr_ratio x lr", min=0)
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on matrices (not biases, norms)", min=0.0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)", min=0.0)
    eval_every: int = option(50, "evaluate (validation and training loss) every this many steps", min=1)
    eval_batches: int = option(8, "batches per evaluation; 0 evaluates every validation row", min=0)
    checkpoint_every: int = option(0, "save a resumable checkpoint every this many steps (0 = never)", min=0)
    keep_checkpoints: int = option(2, "newest checkpoints kept while training; older ones are deleted after each "
                                   "save (0 = keep all)", min=0)
    remove_checkpoints_on_success: bool = option(True, "delete the run's checkpoints once training finished "
                                                 "(they only serve to resume a crashed run)")
    device: str = option("auto", "'auto' (CUDA if present, else CPU), 'cpu', or 'cuda'",
                         choices=("auto", "cpu", "cuda"))
    bf16: bool = option(True, "bf16 autocast when on CUDA (ignored on CPU)")
    compile: bool = option(False, "torch.compile the model when on CUDA (ignored on CPU)")

    def __post_init__(self) -> None:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}; "
                             "make warmup_steps at most steps")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced (the model itself is trained in place)."""

    curve: list[dict[str, float]]
    final_val_loss: float
    final_train_loss: float
    tokens_per_s: float
    n_tokens: int
    steps_done: int
    resumed_from_step: int
    device: str
    seconds: float
    # the final AdamW moments by parameter name (libs.optimizer_state), when train_model(keep_moments=True)
    moments: dict[str, torch.Tensor] | None = None


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA GPU is visible; "
                           "use device='auto' to fall back to the CPU")
    return torch.device(name)


def lr_at_step(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    The decay spans ``decay_steps`` (0: the rest of the run) and holds the floor afterwards.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.decay_steps or (cfg.steps - cfg.warmup_steps), 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def final_lr(cfg: TrainConfig) -> float:
    """The learning rate of ``cfg``'s last optimizer step."""
    return lr_at_step(cfg, cfg.steps - 1)


def post_growth_config(large: TrainConfig, *, components_final_lr: float, warmup_steps: int | None = None,
                       decay_steps: int | None = None) -> TrainConfig:
    """The schedule of a grown model: never re-warmed to a higher peak than its components ended at.

    The peak becomes ``min(large.lr, components_final_lr)`` (the components' last learning rate,
    :func:`final_lr` of their TrainConfig), so the grown model is not pushed out of the basin its
    components reached; ``warmup_steps`` (default: ``large``'s) is a short re-warmup to that peak
    and ``decay_steps`` (default: ``large``'s) a faster cosine decay (LEMON, Wang et al. 2023).
    The floor stays ``min_lr_ratio`` of the new peak. Every learning rate of the result is at most
    ``large.lr`` and at most ``components_final_lr``.
    """
    if not (components_final_lr > 0 and math.isfinite(components_final_lr)):
        raise ValueError(f"components_final_lr must be a positive finite number, got {components_final_lr!r}; "
                         "give the components' schedule a floor above 0 (min_lr_ratio > 0)")
    changes: dict[str, Any] = {"lr": min(large.lr, components_final_lr)}
    if warmup_steps is not None:
        changes["warmup_steps"] = min(warmup_steps, large.steps)
    if decay_steps is not None:
        changes["decay_steps"] = decay_steps
    return dataclasses.replace(large, **changes)


def _row_losses(model: torch.nn.Module, batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each row. batch (B, L) int64, lengths (B,) -> (B,) float32."""
    width = int(lengths.max())
    batch = batch[:, :width]                                   # trim shared padding
    inputs, targets = batch[:, :-1], batch[:, 1:]               # (B, T)
    positions = torch.arange(width - 1, device=batch.device)
    mask = positions[None, :] < (lengths[:, None] - 1)          # (B, T) valid targets
    logits = model(input_ids=inputs).logits                     # (B, T, V)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view_as(targets) * mask
    return nll.sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def per_example_loss(model: torch.nn.Module, tokens: np.ndarray, lengths: np.ndarray, *,
                     batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Mean next-token NLL of every row.

    Parameters
    ----------
    tokens : int array (n, L); lengths : int array (n,)

    Returns
    -------
    float64 array (n,)
    """
    _check_tokens(tokens, lengths, "tokens")
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    out = np.empty(len(tokens), dtype=np.float64)
    order = np.argsort(-lengths, kind="stable")                 # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = torch.as_tensor(tokens[idx], dtype=torch.long, device=device)
        lens = torch.as_tensor(lengths[idx], dtype=torch.long, device=device)
        out[idx] = _row_losses(model, batch, lens).double().cpu().numpy()
    model.train(was_training)
    return out


def _check_tokens(tokens: np.ndarray, lengths: np.ndarray, name: str) -> None:
    if tokens.ndim != 2 or lengths.ndim != 1 or len(tokens) != len(lengths):
        raise ValueError(f"{name}: expected tokens (n, L) and lengths (n,), got {tokens.shape} and {lengths.shape}")
    if len(tokens) == 0:
        raise ValueError(f"{name}: no rows; the split is empty (check the corpus and the selection budget)")
    if lengths.min() < 2 or lengths.max() > tokens.shape[1]:
        raise ValueError(f"{name}: lengths must lie in [2, {tokens.shape[1]}], got [{lengths.min()}, {lengths.max()}]")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


_HOUSEKEEPING = ("checkpoint_every", "keep_checkpoints", "remove_checkpoints_on_success")  # not in fingerprints


def _fingerprint(cfg: TrainConfig, model: torch.nn.Module, n_train: int, seed: int, label: str) -> str:
    """What a checkpoint must match to be resumed: config (less housekeeping), data size, seed, label, model."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _HOUSEKEEPING}
    blob = json.dumps({"cfg": settings, "n_train": n_train, "seed": seed, "label": label,
                       "model": model.config.to_json_string() if hasattr(model, "config") else ""},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(checkpoint_dir: Path, step: int, *, fingerprint: str, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, sampler: "_BatchSampler", curve: list[dict],
                     n_tokens: int, running: float) -> Path:
    """One resumable checkpoint (libs.checkpoints format: safetensors + JSON, atomic, checksummed)."""
    sampler_state = sampler.state()
    state = {"curve": curve, "n_tokens": int(n_tokens), "running": finite_or_none(running),
             "sampler": {"rng": sampler_state["rng"], "pos": int(sampler_state["pos"])}}
    arrays = {"sampler_order": np.asarray(sampler_state["order"], dtype=np.int64),
              "torch_rng": torch.get_rng_state()}
    return save_checkpoint(checkpoint_dir, step, fingerprint=fingerprint, model=model, optimizer=optimizer,
                           state=state, arrays=arrays)


class _BatchSampler:
    """Uniform epochs over the rows, seeded; its state goes into checkpoints.

    Under data parallelism every rank draws the same global batch of
    ``batch_size * world_size`` rows and keeps its own contiguous slice, so the
    global batches (and the loss after N steps) match a single process that uses the
    global batch size.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.rank, self.local = rank, batch_size
        batch_size = batch_size * world_size
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(n), 0

    def next(self) -> np.ndarray:
        out = []
        while len(out) < self.batch_size:
            if self.pos >= self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            take = min(self.batch_size - len(out), self.n - self.pos)
            out.extend(self.order[self.pos:self.pos + take])
            self.pos += take
        return np.asarray(out)[self.rank * self.local:(self.rank + 1) * self.local]

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": self.order, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = state["order"], state["pos"]


def train_model(model: torch.nn.Module, train_tokens: np.ndarray, train_lengths: np.ndarray,
                val_tokens: np.ndarray, val_lengths: np.ndarray, cfg: TrainConfig, *, seed: int,
                weights: np.ndarray | None = None, checkpoint_dir: str | Path | None = None,
                label: str = "train", on_eval: Callable[[int, torch.nn.Module, dict], None] | None = None,
                on_step: Callable[[int], None] | None = None,
                on_checkpoint: Callable[[str], None] | None = None, progress: bool = True,
                initial_moments: dict[str, torch.Tensor] | None = None, keep_moments: bool = False) -> TrainResult:
    """Train ``model`` in place and return its loss curve and throughput.

    Parameters
    ----------
    train_tokens, val_tokens : int arrays (n, L); train_lengths, val_lengths : int arrays (n,)
    weights : float array (n_train,) or None
        Per-example loss weights (e.g. importance weights of a selected subset);
        normalised here to mean 1. Batches are drawn uniformly, so they are used once.
    checkpoint_dir : folder for resumable checkpoints (:mod:`libs.checkpoints` format:
        safetensors and JSON, never pickle; one ``step-*`` folder per save, the newest
        ``cfg.keep_checkpoints`` kept). The newest checkpoint there that verifies (checksums,
        and the same configuration, data size, seed and label) is loaded and training
        continues from its step; a corrupt, truncated or mismatched one is named in a
        warning, set aside into ``rejected/`` and the previous one (or step 0) is used.
        After training finished, ``cfg.remove_checkpoints_on_success`` deletes them.
    label : names the run in progress output and errors (e.g. ``train_large[grown]``).
    on_eval : ``on_eval(step, model, record)`` after every evaluation (cards, features).
    on_step : ``on_step(step)`` after every optimizer step (used by tests to inject a crash).
    on_checkpoint : ``on_checkpoint(folder)`` after every checkpoint is saved (rank 0 only), e.g.
        to copy it to durable storage; the flow uploads it into Metaflow's datastore.
    initial_moments : AdamW moments to start from instead of a fresh state
        (:mod:`libs.optimizer_state`: e.g. a grown model's, mapped from its components'); used
        only when training starts at step 0 (a resumed run takes its checkpoint's).
    keep_moments : return the final AdamW moments in ``result.moments``.

    Raises
    ------
    NonFiniteLossError
        When the loss becomes NaN or infinite; names the step and the last good checkpoint.
    """
    _check_tokens(train_tokens, train_lengths, f"{label} training data")
    _check_tokens(val_tokens, val_lengths, f"{label} validation data")
    n = len(train_tokens)
    if weights is None:
        w = np.ones(n, dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"{label}: weights has shape {w.shape}, expected ({n},) (one per training row)")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"{label}: weights must be finite, non-negative and not all zero")
        w = w / w.mean()

    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    use_bf16 = cfg.bf16 and device.type == "cuda"

    def say(message: str) -> None:
        if rank == 0:
            print(f"[{label}] {message}", file=sys.stderr, flush=True)

    say(f"training on {device}" + (" (bf16 autocast)" if use_bf16 else " (float32)")
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else
             f", {torch.get_num_threads()} CPU threads")
          + (f", data-parallel over {world} processes" if distributed else ""))
    model.to(device).train()
    forward_model = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel
        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        forward_model = torch.compile(forward_model)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.95), fused=fused)
    sampler = _BatchSampler(n, cfg.batch_size, seed, rank, world)
    eval_rng = np.random.default_rng(seed + 1)
    n_eval = len(val_tokens) if cfg.eval_batches == 0 else min(len(val_tokens), cfg.eval_batches * cfg.batch_size)
    val_rows = np.sort(eval_rng.choice(len(val_tokens), n_eval, replace=False))
    train_rows = np.sort(eval_rng.choice(n, min(n, n_eval), replace=False))

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    fingerprint = _fingerprint(cfg, model, n, seed, f"{label}/world{world}"
                               + ("/carried-moments" if initial_moments is not None else ""))
    start_step, curve, n_tokens, resumed_from, resumed_running = 0, [], 0, 0, float("nan")
    loaded = None
    if found_dir := (ckpt_dir is not None and ckpt_dir.is_dir()):
        # every rank verifies and reads the same files; only rank 0 moves bad ones aside
        loaded = load_latest_checkpoint(ckpt_dir, fingerprint, say if rank == 0 else (lambda _m: None),
                                        move_bad=rank == 0)
    if loaded is not None:
        model.load_state_dict({k: v.to(device) for k, v in loaded.model.items()})
        optimizer.load_state_dict(loaded.optimizer)
        sampler.load({"rng": loaded.state["sampler"]["rng"], "pos": loaded.state["sampler"]["pos"],
                      "order": loaded.arrays["sampler_order"].numpy()})
        torch.set_rng_state(loaded.arrays["torch_rng"])
        start_step, curve, n_tokens = loaded.step, loaded.state["curve"], loaded.state["n_tokens"]
        resumed_running = float("nan") if loaded.state["running"] is None else loaded.state["running"]
        resumed_from = start_step
        say(f"resumed from checkpoint {loaded.path} at step {start_step}")
    if distributed and found_dir:
        steps = torch.tensor([start_step, -start_step], dtype=torch.int64, device=device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if int(steps[0]) != -int(steps[1]):
            raise RuntimeError(f"[{label}] the data-parallel ranks loaded different checkpoints (steps "
                               f"{-int(steps[1])}..{int(steps[0])}) from {ckpt_dir}; every rank must see the "
                               "same checkpoint folder (a shared local disk)")

    if loaded is None and initial_moments is not None:
        from libs.optimizer_state import apply_moments, moment_step

        apply_moments(model, optimizer, initial_moments)
        say(f"AdamW state carried over (moments of step {moment_step(initial_moments)})")

    def evaluate(step: int, running: float) -> dict[str, float]:
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            val = per_example_loss(model, val_tokens[val_rows], val_lengths[val_rows],
                                   batch_size=cfg.batch_size, device=device)
            trn = per_example_loss(model, train_tokens[train_rows], train_lengths[train_rows],
                                   batch_size=cfg.batch_size, device=device)
        model.train()
        # token-weighted means, so the validation loss is the usual per-token figure
        vt, tt = val_lengths[val_rows] - 1, train_lengths[train_rows] - 1
        train_eval = float((trn * tt).sum() / tt.sum())
        record = {"step": step, "tokens": n_tokens,
                  "train_loss": running if math.isfinite(running) else train_eval,  # step 0: no batches yet
                  "train_eval_loss": train_eval,
                  "val_loss": float((val * vt).sum() / vt.sum()), "lr": lr_at_step(cfg, max(step - 1, 0))}
        curve.append(record)
        elapsed = time.perf_counter() - t0
        say(f"step {step}/{cfg.steps}: val loss {record['val_loss']:.4f}, train loss {train_eval:.4f}, "
            f"{tokens_this_run / max(elapsed, 1e-9):,.0f} tokens/s")
        if on_eval is not None and rank == 0:
            on_eval(step, model, record)
        return record

    t0 = time.perf_counter()
    running, tokens_this_run = resumed_running, 0
    if start_step == 0:
        evaluate(0, float("nan"))
    bar = None
    if progress and rank == 0:              # plain lines: Metaflow's logs drop tqdm's carriage returns
        from libs.progress import Progress
        bar = Progress(cfg.steps, label, unit="steps", initial=start_step, every_s=10.0)
    last_good = f"{loaded.path} (step {loaded.step})" if loaded is not None else "none (no checkpoint saved yet)"
    for step in range(start_step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(cfg, step)
        step_loss, step_tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            idx = sampler.next()
            batch = torch.as_tensor(train_tokens[idx], dtype=torch.long, device=device)
            lens = torch.as_tensor(train_lengths[idx], dtype=torch.long, device=device)
            bw = torch.as_tensor(w[idx], dtype=torch.float32, device=device)
            sync = (not distributed) or micro == cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else forward_model.no_sync()):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    losses = _row_losses(forward_model, batch, lens)
                loss = (bw * losses).mean() / cfg.grad_accum
                loss.backward()               # DDP averages the gradients over ranks
            step_loss += float(loss.detach())
            step_tokens += int((lens - 1).sum())
        if distributed:
            totals = torch.tensor([step_loss / world, float(step_tokens)], dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            step_loss, step_tokens = float(totals[0]), int(totals[1])
        n_tokens += step_tokens
        tokens_this_run += step_tokens
        if not math.isfinite(step_loss):
            raise NonFiniteLossError(
                f"[{label}] the training loss became {step_loss} at step {step + 1}; last good checkpoint: "
                f"{last_good}. Lower lr (now {cfg.lr}) or raise warmup_steps, check the data for empty "
                "rows, then resume the run.")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        running = step_loss if not math.isfinite(running) else 0.9 * running + 0.1 * step_loss
        done = step + 1
        if bar is not None:
            bar.update(1, note=f"loss {running:.3f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            evaluate(done, running)
        if ckpt_dir is not None and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0) and done < cfg.steps:
            saved = ckpt_dir / f"step-{done:08d}"
            if rank == 0:                     # one writer; every rank holds the same state
                saved = _save_checkpoint(ckpt_dir, done, fingerprint=fingerprint, model=model, optimizer=optimizer,
                                         sampler=sampler, curve=curve, n_tokens=n_tokens, running=running)
                prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
                if on_checkpoint is not None:
                    on_checkpoint(str(saved))
            if distributed:
                dist.barrier()
            last_good = f"{saved} (step {done})"
        if on_step is not None:
            on_step(done)
    if bar is not None:
        bar.close()
    if ckpt_dir is not None and cfg.remove_checkpoints_on_success:
        if distributed:
            dist.barrier()                    # no rank still reading a checkpoint
        if rank == 0:
            remove_checkpoints(ckpt_dir)
    seconds = time.perf_counter() - t0
    final = curve[-1]
    moments = None
    if keep_moments:
        from libs.optimizer_state import extract_moments

        moments = extract_moments(model, optimizer)
    model.cpu().eval()
    return TrainResult(curve=curve, final_val_loss=final["val_loss"], final_train_loss=final["train_eval_loss"],
                       tokens_per_s=tokens_this_run / max(seconds, 1e-9), n_tokens=n_tokens, steps_done=cfg.steps,
                       resumed_from_step=resumed_from, device=str(device), seconds=seconds, moments=moments)
