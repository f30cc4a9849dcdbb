"""Stage 4: train the large model from the grown initialization, from scratch, and the small control.

Three arms, one foreach branch each:

* ``grown``: the grow step's model, trained for ``train.steps`` steps;
* ``scratch``: a fresh model of the grown model's shape, same batches in the same order
  (the data-order seed is shared) and the same budget: the baseline a saving is measured
  against;
* ``control``: the first small model, trained on from its final weights for exactly the
  FLOPs the scratch arm spends minus what that small model already spent (equal total
  compute). If the control beats scratch, the large shape is not worth growing into at
  this budget and ``join_large`` assesses no saving (the capacity check).

The step checkpoints every ``train.checkpoint_every`` steps: a Metaflow ``resume`` or
``@retry`` after a crash continues from the last checkpoint rather than from step 0.

With ``nproc_per_node > 1`` an arm trains data-parallel (DistributedDataParallel) on
that many processes of one node: :func:`run` writes the inputs to a folder, starts
``python -m steps.train_large_ddp`` on every rank through a launcher the caller passes
in (the flow passes metaflow-torchrun's single-node launcher), and loads what rank 0
wrote back into the same :class:`TrainLargeResult`. With 1 (the default) it trains in
the calling process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from libs.models import (ModelSpec, build_model, count_parameters, flops_per_token, model_from_files,
                         model_shape, model_to_files)
from libs.report import Figure, Markdown
from libs.schema import option
from libs.token_data import TokenData
from libs.training import TrainConfig, train_model

__all__ = ["ARMS", "DDP_BACKENDS", "FAIL_ENV", "RANK_MODULE", "TrainLargeConfig", "TrainLargeResult", "run", "grown_moment_files",
           "train_arm", "arm_config", "grown_train_config", "control_plan", "report", "scratch_model_like", "failure_injector",
           "resolve_backend", "write_inputs", "read_inputs", "write_result", "read_result"]

ARMS = ("grown", "scratch", "control")
RANK_MODULE = "steps.train_large_ddp"   # what every data-parallel rank runs (python -m, under torchrun)
# --standalone: a rendezvous on a free local port, so parallel arms' launches never collide on a port;
# --module: ranks run `python -m steps.train_large_ddp`, importing the project like any other module.
TORCHRUN_ARGS = {"standalone": "", "module": ""}
DDP_BACKENDS = ("auto", "nccl", "gloo")
FAIL_ENV = "GROWTHFLOW_FAIL_AT_STEP"  # test-only switch: "<arm>:<step>" makes that arm's training crash there


@dataclasses.dataclass(frozen=True)
class TrainLargeConfig:
    """How the large model is trained (both arms alike)."""

    train: TrainConfig = option(doc="training loop settings for both arms",
                                default_factory=lambda: TrainConfig(steps=600, batch_size=16, lr=2e-3,
                                                                    warmup_steps=30, eval_every=50,
                                                                    checkpoint_every=100))
    arms: tuple[str, ...] = option(doc="which arms to train: 'grown' (from the grow step), 'scratch' (fresh init "
                                   "of the same shape, the baseline), 'control' (the first small model trained "
                                   "on for equal total FLOPs: the capacity check)",
                                   choices=ARMS, default_factory=lambda: ARMS)
    control_lr: float = option(0.0, "peak learning rate of the control arm; 0 = the small models' pretraining "
                               "lr (pretrain_small.train.lr)", min=0.0)
    control_warmup_steps: int = option(0, "warmup of the control arm's schedule (it continues a trained model); "
                                       "0 = none", min=0)
    grown_schedule: str = option("continue", "the grown arm's learning-rate schedule: 'continue' (peak at most the "
                                 "components' final lr, grown_warmup_steps of re-warmup, a cosine decay over "
                                 "grown_decay_fraction of the remaining steps: libs.training.post_growth_config) or "
                                 "'restart' (the same schedule as scratch)", choices=("continue", "restart"))
    grown_warmup_steps: int = option(10, "grown_schedule 'continue': warmup steps after growth", min=0)
    grown_decay_fraction: float = option(1.0, "grown_schedule 'continue': the cosine decay spans this fraction "
                                         "of the steps after the warmup (LEMON's faster decay: < 1)",
                                         min=0.0, max=1.0, min_exclusive=True)
    grown_optimizer: str = option("fresh", "the grown arm's AdamW state at its first step: 'fresh' (zero moments) "
                                  "or 'carry' (its components' final moments mapped through the growth operator: "
                                  "libs.optimizer_state; copied entries keep theirs, new ones start at m = 0 and "
                                  "their tensor's mean v). The control arm always starts fresh",
                                  choices=("fresh", "carry"))
    nproc_per_node: int = option(1, "processes (one per GPU) that train each arm data-parallel on one node, "
                                 "launched by metaflow-torchrun; 1 trains in the step's own process. "
                                 "train.batch_size is per process (global batch = batch_size x grad_accum x "
                                 "nproc_per_node)", min=1)
    ddp_backend: str = option("auto", "torch.distributed backend when nproc_per_node > 1: 'auto' (nccl on "
                              "CUDA, gloo on CPU), 'nccl' or 'gloo'", choices=DDP_BACKENDS)

    def __post_init__(self) -> None:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must list distinct values from {ARMS}, got {list(self.arms)}")
        if "control" in self.arms and "scratch" not in self.arms:
            raise ValueError("arm 'control' is sized by the 'scratch' arm's FLOPs and only compared with it; "
                             "add 'scratch' to train_large.arms or drop 'control'")


@dataclasses.dataclass(frozen=True)
class TrainLargeResult:
    arm: str
    model_files: dict[str, bytes]
    curve: list[dict[str, float]]
    final_val_loss: float
    final_train_loss: float
    tokens_per_s: float
    n_params: int
    flops_per_step: float
    n_tokens: int
    resumed_from_step: int
    gap_features: dict[str, float]
    measured_gap: float
    device: str
    seconds: float
    steps: int = 0                   # optimizer steps this arm trained (the control's differ from the config's)
    init_flops: float = 0.0          # FLOPs already spent on this arm's initialization (the control's small model)


def scratch_model_like(grown_files: dict[str, bytes], seed: int):
    """A freshly initialised model with the grown model's family and shape."""
    grown = model_from_files(grown_files)
    shape = model_shape(grown)
    spec = ModelSpec(name="scratch", family=shape["family"], n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                     n_head=shape["n_head"], n_inner=shape["n_inner"],
                     tie_embeddings=bool(getattr(grown.config, "tie_word_embeddings", False)))
    return build_model(spec, vocab_size=shape["vocab_size"], n_positions=shape["n_positions"], seed=seed,
                       bos_token_id=grown.config.bos_token_id, eos_token_id=grown.config.eos_token_id)


def control_plan(cfg: TrainLargeConfig, *, grown_files: dict[str, bytes], control_files: dict[str, bytes],
                 control_spent_flops: float, data: TokenData, indices: np.ndarray) -> dict:
    """How long the control arm trains so that its total compute equals the scratch arm's.

    Scratch spends ``train.steps`` steps of the large shape; the control has already spent
    ``control_spent_flops`` (its own pretraining), so it gets the rest in small-model steps
    (:func:`libs.growth_saving.control_arm_steps`). FLOPs per step are the model's FLOPs per
    token times the expected target tokens of one optimizer step on the selected rows (every
    arm sees the same rows).
    """
    from libs.growth_saving import control_arm_steps

    rows_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.nproc_per_node
    tokens_per_step = rows_per_step * float(np.mean(data.train_lengths[np.asarray(indices)] - 1))
    large = flops_per_token(model_from_files(grown_files), data.seq_len) * tokens_per_step
    small = flops_per_token(model_from_files(control_files), data.seq_len) * tokens_per_step
    steps = control_arm_steps(scratch_steps=cfg.train.steps, scratch_flops_per_step=large,
                              small_flops_per_step=small, small_pretrain_flops=float(control_spent_flops))
    return {"steps": steps, "scratch_flops": cfg.train.steps * large, "spent_flops": float(control_spent_flops),
            "flops_per_step": small, "large_flops_per_step": large}


def grown_train_config(cfg: TrainLargeConfig, components_train: TrainConfig) -> TrainConfig:
    """The grown arm's training settings under ``cfg.grown_schedule`` (the components trained with
    ``components_train``): the large arms' own for 'restart'; for 'continue' a peak of at most the
    components' final learning rate, a short re-warmup and the configured decay span."""
    from libs.training import final_lr, post_growth_config

    large = cfg.train
    if cfg.grown_schedule == "restart":
        return large
    warmup = min(cfg.grown_warmup_steps, large.steps)
    decay = max(1, int(round(cfg.grown_decay_fraction * (large.steps - warmup))))
    return post_growth_config(large, components_final_lr=final_lr(components_train), warmup_steps=warmup,
                              decay_steps=decay)


def grown_moment_files(cfg: TrainLargeConfig, grown_moments: dict[str, bytes] | None) -> dict[str, bytes] | None:
    """The optimizer moments the grown arm starts from under ``cfg.grown_optimizer``: None for 'fresh';
    ``grown_moments`` (``grow``'s ``moment_files``) for 'carry', which must then exist."""
    if cfg.grown_optimizer == "fresh":
        return None
    if not grown_moments:
        raise ValueError("train_large.grown_optimizer = 'carry' but the grow step has no carried moments: the run's "
                         "small models were trained before their AdamW moments were kept. Run the flow again "
                         "(not resume from before pretrain_small), or set grown_optimizer = 'fresh'")
    return grown_moments


def arm_config(cfg: TrainLargeConfig, arm: str, *, control_steps: int = 0, control_lr: float = 0.0,
               components_train: TrainConfig | None = None) -> TrainLargeConfig:
    """The config an arm trains with: the grown arm's schedule (:func:`grown_train_config`, given the
    components' ``components_train``) and the control's steps and learning rate differ from scratch's."""
    if arm == "grown" and components_train is not None:
        return dataclasses.replace(cfg, train=grown_train_config(cfg, components_train))
    if arm != "control":
        return cfg
    lr = cfg.control_lr or control_lr
    if lr <= 0:
        raise ValueError("the control arm needs a learning rate: set train_large.control_lr or pass the small "
                         "models' pretraining lr")
    train = dataclasses.replace(cfg.train, steps=control_steps, lr=lr,
                                warmup_steps=min(cfg.control_warmup_steps, control_steps))
    return dataclasses.replace(cfg, train=train)


def run(cfg: TrainLargeConfig, arm: str, *, init_files: dict[str, bytes], data: TokenData, indices: np.ndarray,
        weights: np.ndarray, seed: int, init_flops: float = 0.0, checkpoint_dir: str | None = None,
        on_eval: Callable | None = None, on_step: Callable[[int], None] | None = None,
        on_checkpoint: Callable[[str], None] | None = None, progress: bool = True,
        launch: Callable[..., None] | None = None, gap: dict | None = None,
        moment_files: dict[str, bytes] | None = None) -> TrainLargeResult:
    """Train arm ``arm`` on the selected rows ``indices`` (loss weights ``weights``).

    ``init_files`` are the model files the arm starts from: the grown model for 'grown' and
    'scratch' (scratch takes only its shape), the small model for 'control' (whose ``cfg``
    comes from :func:`arm_config`, and whose ``init_flops`` is the small model's pretraining).
    With ``cfg.nproc_per_node == 1`` the arm trains here (:func:`train_arm`). With more, it
    trains data-parallel in ``cfg.nproc_per_node`` processes started by ``launch``, called as
    ``launch(entrypoint=..., nproc_per_node=..., entrypoint_args=[...], torchrun_args={...})``
    (metaflow-torchrun's ``TorchrunSingleNodeMultiGPU().run``); ``on_eval`` and ``on_step``
    stay in this process and are not called then (the ranks honour the test-only
    ``GROWTHFLOW_FAIL_AT_STEP`` switch themselves).

    ``gap`` says how the trained model's gap row is measured: ``train_eval_rows`` and
    ``feature_rows`` (the run's ``predict_gap`` settings), ``tokens_before``, the tokens its
    initialization already trained on (a grown or control arm's pretraining), so its epochs count
    them as the LM zoo's do, and ``reference_init`` (model files): the random initialization its
    distance-from-init features are measured from, as an LM-zoo model's are from its own (for the
    grown arm the growth operator applied to its components' random initializations, for the
    control its small model's); without it, the arm's own starting point (right for scratch).

    ``moment_files`` (:mod:`libs.optimizer_state` files, e.g. ``grow``'s ``moment_files``) start
    the optimizer from those AdamW moments instead of a fresh state (``grown_optimizer = 'carry'``).
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    if cfg.nproc_per_node > 1:
        return _run_data_parallel(cfg, arm, init_files=init_files, data=data, indices=indices, weights=weights,
                                  seed=seed, init_flops=init_flops, checkpoint_dir=checkpoint_dir, launch=launch,
                                  progress=progress, gap=gap, moment_files=moment_files,
                                  callbacks_dropped=[name for name, cb in (("on_eval", on_eval), ("on_step", on_step))
                                                     if cb is not None])
    return train_arm(cfg, arm, init_files=init_files, data=data, indices=indices, weights=weights, seed=seed,
                     init_flops=init_flops, checkpoint_dir=checkpoint_dir, on_eval=on_eval, on_step=on_step,
                     on_checkpoint=on_checkpoint, progress=progress, gap=gap, moment_files=moment_files)


def train_arm(cfg: TrainLargeConfig, arm: str, *, init_files: dict[str, bytes], data: TokenData,
              indices: np.ndarray, weights: np.ndarray, seed: int, init_flops: float = 0.0,
              checkpoint_dir: str | None = None, on_eval: Callable | None = None,
              on_step: Callable[[int], None] | None = None, on_checkpoint: Callable[[str], None] | None = None,
              progress: bool = True, gap: dict | None = None,
              moment_files: dict[str, bytes] | None = None) -> TrainLargeResult:
    """Train one arm in this process; a DDP rank when a torch.distributed process group is up."""
    from libs.gap_features import checkpoint_row, probe_for_selection
    from libs.optimizer_state import moments_from_files

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    if moment_files and arm == "scratch":
        raise ValueError("the scratch arm starts from a random initialization and a fresh optimizer; carried "
                         "moments belong to the grown arm (train_large.grown_optimizer)")
    t0 = time.perf_counter()
    model = scratch_model_like(init_files, seed + 7919) if arm == "scratch" else model_from_files(init_files)
    gap = dict(gap or {})
    reference = model_from_files(gap["reference_init"]) if gap.get("reference_init") else model
    init_state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    tokens, lengths = data.train_rows(indices)
    extra = {"on_checkpoint": on_checkpoint} if on_checkpoint is not None else {}
    if moment_files:
        extra["initial_moments"] = moments_from_files(moment_files)
    result = train_model(model, tokens, lengths, data.val_tokens, data.val_lengths, cfg.train, seed=seed,
                         weights=weights, checkpoint_dir=checkpoint_dir, label=f"train_large[{arm}]", on_eval=on_eval,
                         on_step=on_step, progress=progress, **extra)
    probe = probe_for_selection(data, indices, train_eval_rows=gap.get("train_eval_rows", 256),
                                feature_rows=gap.get("feature_rows", 64))
    gap = checkpoint_row(model, probe, model_name=arm, step=result.steps_done,
                         tokens_seen=result.n_tokens + float(gap.get("tokens_before", 0.0)), lr=cfg.train.lr,
                         init_state=init_state, seed=seed)
    features = gap["features"]   # gap["gap"]: validation loss on every validation row - the fixed subset's
    fpt = flops_per_token(model, data.seq_len)
    if _rank() == 0:
        print(f"[train_large[{arm}]] final val loss {result.final_val_loss:.4f} on {result.device}, "
              f"{result.tokens_per_s:,.0f} tokens/s", file=sys.stderr, flush=True)
    return TrainLargeResult(
        arm=arm, model_files=model_to_files(model), curve=result.curve, final_val_loss=result.final_val_loss,
        final_train_loss=result.final_train_loss, tokens_per_s=result.tokens_per_s,
        n_params=count_parameters(model), flops_per_step=fpt * result.n_tokens / max(result.steps_done, 1),
        n_tokens=result.n_tokens, resumed_from_step=result.resumed_from_step, gap_features=features,
        measured_gap=gap["gap"], device=result.device,
        seconds=time.perf_counter() - t0, steps=result.steps_done, init_flops=float(init_flops))


# ---------------------------------------------------------------------------------------------
# data parallel on one node: the step's side (the ranks' side is steps/train_large_ddp.py)

_ARRAYS = ("train_tokens", "train_lengths", "val_tokens", "val_lengths", "train_sources")


def resolve_backend(cfg: TrainLargeConfig) -> tuple[str, str, int]:
    """(backend, device type, GPUs visible) for ``cfg``; raises ConfigError on a mismatch.

    'auto' is nccl when the training device is CUDA and gloo otherwise. On CUDA each rank
    needs its own GPU: more processes than visible GPUs is an error naming the key.
    """
    import torch

    from libs.schema import ConfigError
    from libs.training import resolve_device

    n = cfg.nproc_per_node
    device = resolve_device(cfg.train.device)
    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = cfg.ddp_backend if cfg.ddp_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and n > n_gpus:
        raise ConfigError(f"train_large.nproc_per_node={n} asks for {n} processes, one per GPU, but this machine "
                          f"has {n_gpus} CUDA GPU(s); set train_large.nproc_per_node to at most {n_gpus} "
                          "(and resources.train_large.gpu to the same number on remote compute)")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"train_large.ddp_backend='nccl' needs CUDA GPUs, but training runs on {device} "
                          f"(train_large.train.device={cfg.train.device!r}); use 'gloo' or 'auto'")
    return backend, device.type, n_gpus


def write_inputs(work_dir: str | Path, cfg: TrainLargeConfig, arm: str, *, init_files: dict[str, bytes],
                 data: TokenData, indices: np.ndarray, weights: np.ndarray, seed: int, init_flops: float,
                 checkpoint_dir: str | None, backend: str, threads_per_rank: int | None, progress: bool,
                 gap: dict | None = None, moment_files: dict[str, bytes] | None = None) -> None:
    """Write everything a rank needs into ``work_dir`` as plain files (JSON, npz, safetensors): nothing pickled."""
    from libs.schema import to_dict

    work_dir = Path(work_dir)
    _write_files(work_dir / "init", init_files)
    gap = dict(gap or {})
    if gap.get("reference_init"):
        _write_files(work_dir / "reference_init", gap.pop("reference_init"))
    if moment_files:
        _write_files(work_dir / "moments", moment_files)
    arrays = {k: np.asarray(getattr(data, k)) for k in _ARRAYS}
    np.savez(work_dir / "data.npz", indices=np.asarray(indices), weights=np.asarray(weights), **arrays)
    inputs = {"config": to_dict(cfg), "arm": arm, "seed": int(seed), "init_flops": float(init_flops),
              "vocab_size": int(data.vocab_size), "seq_len": int(data.seq_len), "bos_id": int(data.bos_id),
              "eos_id": int(data.eos_id),
              "checkpoint_dir": None if checkpoint_dir is None else os.path.abspath(checkpoint_dir),
              "backend": backend, "threads_per_rank": threads_per_rank, "progress": bool(progress),
              "gap": gap}
    (work_dir / "inputs.json").write_text(json.dumps(inputs, indent=1))


def read_inputs(work_dir: str | Path) -> dict:
    """What :func:`write_inputs` wrote: ``config`` (typed), ``data`` (TokenData), ``init_files``, ... (a rank's side)."""
    from libs.schema import parse

    work_dir = Path(work_dir)
    inputs = json.loads((work_dir / "inputs.json").read_text())
    inputs["config"] = parse(TrainLargeConfig, inputs["config"], source=str(work_dir / "inputs.json"),
                             prefix="train_large.")
    with np.load(work_dir / "data.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    inputs["indices"], inputs["weights"] = arrays.pop("indices"), arrays.pop("weights")
    inputs["data"] = TokenData(**arrays, vocab_size=inputs.pop("vocab_size"), seq_len=inputs.pop("seq_len"),
                               bos_id=inputs.pop("bos_id"), eos_id=inputs.pop("eos_id"))
    inputs["init_files"] = _read_files(work_dir / "init")
    if (work_dir / "reference_init").is_dir():
        inputs["gap"]["reference_init"] = _read_files(work_dir / "reference_init")
    inputs["moment_files"] = _read_files(work_dir / "moments") if (work_dir / "moments").is_dir() else None
    return inputs


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)


def _read_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def write_result(work_dir: str | Path, result: TrainLargeResult) -> None:
    """Rank 0's result as plain files; ``result.json`` is written last, so its presence means the result is whole."""
    out = Path(work_dir) / "result"
    _write_files(out / "model", result.model_files)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "model_files"}
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, out / "result.json")


def read_result(work_dir: str | Path) -> TrainLargeResult:
    """The TrainLargeResult rank 0 wrote into ``work_dir`` (raises if it wrote none)."""
    out = Path(work_dir) / "result"
    if not (out / "result.json").is_file():
        raise RuntimeError(f"the data-parallel ranks finished but rank 0 wrote no result into {out}; "
                           "see the ranks' output above")
    fields = json.loads((out / "result.json").read_text())
    files = _read_files(out / "model")
    return TrainLargeResult(model_files=files, **fields)


def _run_data_parallel(cfg: TrainLargeConfig, arm: str, *, init_files: dict[str, bytes], data: TokenData,
                       indices: np.ndarray, weights: np.ndarray, seed: int, init_flops: float,
                       checkpoint_dir: str | None, launch: Callable[..., None] | None, progress: bool,
                       callbacks_dropped: list[str], gap: dict | None = None,
                       moment_files: dict[str, bytes] | None = None) -> TrainLargeResult:
    import torch

    label = f"train_large[{arm}]"
    n = cfg.nproc_per_node
    if launch is None:
        raise ValueError(f"train_large.nproc_per_node={n} needs a launcher for its {n} processes: pass "
                         "launch=TorchrunSingleNodeMultiGPU().run (from metaflow-torchrun), as the flow does, "
                         "or set train_large.nproc_per_node = 1")
    backend, device_type, n_gpus = resolve_backend(cfg)
    threads = None
    if device_type == "cpu":
        threads = max(1, torch.get_num_threads() // n)
        print(f"[{label}] WARNING: train_large.nproc_per_node={n} on CPU: {n} gloo processes of {threads} "
              "thread(s) each. Data parallelism on CPU is for testing (it reproduces one process's losses); "
              "it is not faster than one process using every core.", file=sys.stderr, flush=True)
    print(f"[{label}] data-parallel over {n} processes ({backend}, {device_type}"
          + (f", {n_gpus} GPUs visible" if device_type == "cuda" else "")
          + ") through metaflow-torchrun's single-node launcher; global batch "
          f"{cfg.train.batch_size * cfg.train.grad_accum * n} rows per optimizer step", file=sys.stderr, flush=True)
    if callbacks_dropped:
        print(f"[{label}] {' and '.join(callbacks_dropped)} not called under DDP (training runs in torchrun's "
              "processes): the live loss card is skipped; the final card and artifacts are the same as with one "
              "process", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train_large_ddp_") as work_dir:
        write_inputs(work_dir, cfg, arm, init_files=init_files, data=data, indices=indices, weights=weights,
                     seed=seed, init_flops=init_flops, checkpoint_dir=checkpoint_dir, backend=backend,
                     threads_per_rank=threads, progress=progress, gap=gap, moment_files=moment_files)
        launch(entrypoint=RANK_MODULE, nproc_per_node=n, entrypoint_args=["--work-dir", work_dir],
               torchrun_args=dict(TORCHRUN_ARGS))
        result = read_result(work_dir)
    return dataclasses.replace(result, device=f"{result.device} x{n} (DDP, {backend})",
                               seconds=time.perf_counter() - t0)


def _rank() -> int:
    """This process's rank under torch.distributed (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def failure_injector(arm: str, spec: str | None = None) -> Callable[[int], None] | None:
    """Test-only: ``spec`` (default: ``$GROWTHFLOW_FAIL_AT_STEP``) = ``"<arm>:<step>"`` crashes that arm there.

    Pass the result as ``on_step``. Under data parallelism every rank reads the variable
    (torchrun's processes inherit the environment), so all of them stop at the same step.
    """
    spec = os.environ.get(FAIL_ENV, "") if spec is None else spec
    if not spec:
        return None
    fail_arm, fail_step = spec.split(":")

    def crash(step: int) -> None:
        if arm == fail_arm and step == int(fail_step):
            raise RuntimeError(f"injected failure at step {step} of arm {arm} ({FAIL_ENV}={spec})")

    return crash


def loss_curve_figure(curves: dict[str, list[dict]], title: str):
    """Validation (solid) and training (dashed) loss against steps, one colour per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (arm, curve) in enumerate(curves.items()):
        steps = [r["step"] for r in curve]
        ax.plot(steps, [r["val_loss"] for r in curve], color=f"C{i}", marker="o", ms=3, label=f"{arm} (val)")
        if all("train_eval_loss" in r for r in curve):
            ax.plot(steps, [r["train_eval_loss"] for r in curve], color=f"C{i}", ls="--", label=f"{arm} (train)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report(result: TrainLargeResult) -> list:
    resumed = (f" Resumed from its checkpoint at step {result.resumed_from_step}."
               if result.resumed_from_step else "")
    return [
        Markdown(f"## Large model, arm `{result.arm}`\n\nFinal validation loss **{result.final_val_loss:.4f}** "
                 f"(training {result.final_train_loss:.4f}, gap {result.measured_gap:.4f}); {result.n_params:,} "
                 f"parameters; {result.tokens_per_s:,.0f} tokens/s on {result.device}; {result.n_tokens:,} tokens "
                 f"in {result.seconds:.0f} s.{resumed}"),
        Figure(loss_curve_figure({result.arm: result.curve}, f"{result.arm}: loss curve"), title="Loss curve"),
    ]
