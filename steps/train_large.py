"""Stage 4: train the large model from the grown initialization, and from scratch.

Both arms have the same shape (the grown model's), see the same batches in the same
order (the data-order seed is shared) and the same token budget; only the
initialization differs. That makes ``join_large``'s comparison a controlled one.
The step checkpoints every ``train.checkpoint_every`` steps: a Metaflow ``resume``
after a crash continues from the last checkpoint rather than from step 0.

With ``nproc_per_node > 1`` an arm trains data-parallel (DistributedDataParallel) on
that many processes of one node: :func:`run` hands the work to the entry script
``steps/train_large_ddp.py`` through a launcher the caller passes in (the flow passes
metaflow-torchrun's single-node launcher) and loads what rank 0 wrote back into the
same :class:`TrainLargeResult`. With 1 (the default) it trains in the calling process.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable

import numpy as np

from libs.models import (ModelSpec, build_model, count_parameters, flops_per_token, model_from_files,
                         model_shape, model_to_files)
from libs.report import Figure, Markdown
from libs.schema import option
from libs.training import TrainConfig, train_model

__all__ = ["ARMS", "DDP_BACKENDS", "FAIL_ENV", "TrainLargeConfig", "TrainLargeResult", "run", "train_arm",
           "report", "scratch_model_like", "failure_injector"]

ARMS = ("grown", "scratch")
DDP_BACKENDS = ("auto", "nccl", "gloo")
FAIL_ENV = "GROWTHFLOW_FAIL_AT_STEP"  # test-only switch: "<arm>:<step>" makes that arm's training crash there


@dataclasses.dataclass(frozen=True)
class TrainLargeConfig:
    """How the large model is trained (both arms alike)."""

    train: TrainConfig = option(doc="training loop settings for both arms",
                                default_factory=lambda: TrainConfig(steps=600, batch_size=16, lr=2e-3,
                                                                    warmup_steps=30, eval_every=50,
                                                                    checkpoint_every=100))
    arms: tuple[str, ...] = option(doc="which initializations to train: 'grown' (from the grow step), "
                                   "'scratch' (fresh init of the same shape, the baseline)",
                                   choices=ARMS, default_factory=lambda: ARMS)
    gap_feature_rows: int = option(64, "training rows used for the trained model's gap features", min=8)
    nproc_per_node: int = option(1, "processes (one per GPU) that train each arm data-parallel on one node, "
                                 "launched by metaflow-torchrun; 1 trains in the step's own process. "
                                 "train.batch_size is per process (global batch = batch_size x grad_accum x "
                                 "nproc_per_node)", min=1)
    ddp_backend: str = option("auto", "torch.distributed backend when nproc_per_node > 1: 'auto' (nccl on "
                              "CUDA, gloo on CPU), 'nccl' or 'gloo'", choices=DDP_BACKENDS)

    def __post_init__(self) -> None:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must list distinct values from {ARMS}, got {list(self.arms)}")


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


def scratch_model_like(grown_files: dict[str, bytes], seed: int):
    """A freshly initialised model with the grown model's family and shape."""
    grown = model_from_files(grown_files)
    shape = model_shape(grown)
    spec = ModelSpec(name="scratch", family=shape["family"], n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                     n_head=shape["n_head"], n_inner=shape["n_inner"],
                     tie_embeddings=bool(getattr(grown.config, "tie_word_embeddings", False)))
    return build_model(spec, vocab_size=shape["vocab_size"], n_positions=shape["n_positions"], seed=seed,
                       bos_token_id=grown.config.bos_token_id, eos_token_id=grown.config.eos_token_id)


def run(cfg: TrainLargeConfig, arm: str, *, grown_files: dict[str, bytes], train_tokens: np.ndarray,
        train_lengths: np.ndarray, val_tokens: np.ndarray, val_lengths: np.ndarray, indices: np.ndarray,
        weights: np.ndarray, seq_len: int, seed: int, checkpoint_dir: str | None = None,
        on_eval: Callable | None = None, on_step: Callable[[int], None] | None = None,
        progress: bool = True, launch: Callable[..., None] | None = None) -> TrainLargeResult:
    """Train arm ``arm`` ('grown' or 'scratch') on the selected rows for ``cfg.train.steps`` steps.

    With ``cfg.nproc_per_node == 1`` the arm trains here (:func:`train_arm`). With more,
    it trains data-parallel in ``cfg.nproc_per_node`` processes started by ``launch``,
    called as ``launch(entrypoint=..., nproc_per_node=..., entrypoint_args=[...],
    torchrun_args={...})`` (metaflow-torchrun's ``TorchrunSingleNodeMultiGPU().run``);
    ``on_eval`` and ``on_step`` stay in this process and are not called then (the ranks
    honour the test-only ``GROWTHFLOW_FAIL_AT_STEP`` switch themselves), see
    :mod:`steps.train_large_ddp`.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    if cfg.nproc_per_node > 1:
        from steps.train_large_ddp import run_data_parallel

        return run_data_parallel(cfg, arm, grown_files=grown_files, train_tokens=train_tokens,
                                 train_lengths=train_lengths, val_tokens=val_tokens, val_lengths=val_lengths,
                                 indices=indices, weights=weights, seq_len=seq_len, seed=seed,
                                 checkpoint_dir=checkpoint_dir, launch=launch, progress=progress,
                                 callbacks_dropped=[name for name, cb in (("on_eval", on_eval), ("on_step", on_step))
                                                    if cb is not None])
    return train_arm(cfg, arm, grown_files=grown_files, train_tokens=train_tokens, train_lengths=train_lengths,
                     val_tokens=val_tokens, val_lengths=val_lengths, indices=indices, weights=weights,
                     seq_len=seq_len, seed=seed, checkpoint_dir=checkpoint_dir, on_eval=on_eval, on_step=on_step,
                     progress=progress)


def train_arm(cfg: TrainLargeConfig, arm: str, *, grown_files: dict[str, bytes], train_tokens: np.ndarray,
              train_lengths: np.ndarray, val_tokens: np.ndarray, val_lengths: np.ndarray, indices: np.ndarray,
              weights: np.ndarray, seq_len: int, seed: int, checkpoint_dir: str | None = None,
              on_eval: Callable | None = None, on_step: Callable[[int], None] | None = None,
              progress: bool = True) -> TrainLargeResult:
    """Train one arm in this process; a DDP rank when a torch.distributed process group is up."""
    from libs.gap_features import lm_features

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    t0 = time.perf_counter()
    model = model_from_files(grown_files) if arm == "grown" else scratch_model_like(grown_files, seed + 7919)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tokens, lengths = train_tokens[indices], train_lengths[indices]
    result = train_model(model, tokens, lengths, val_tokens, val_lengths, cfg.train, seed=seed, weights=weights,
                         checkpoint_dir=checkpoint_dir, label=f"train_large[{arm}]", on_eval=on_eval,
                         on_step=on_step, progress=progress)
    rows = np.random.default_rng(seed).choice(len(tokens), min(cfg.gap_feature_rows, len(tokens)), replace=False)
    features = lm_features(model, tokens[rows], lengths[rows], init_state=init_state, seed=seed)
    fpt = flops_per_token(model, seq_len)
    if _rank() == 0:
        print(f"[train_large[{arm}]] final val loss {result.final_val_loss:.4f} on {result.device}, "
              f"{result.tokens_per_s:,.0f} tokens/s", file=sys.stderr, flush=True)
    return TrainLargeResult(
        arm=arm, model_files=model_to_files(model), curve=result.curve, final_val_loss=result.final_val_loss,
        final_train_loss=result.final_train_loss, tokens_per_s=result.tokens_per_s,
        n_params=count_parameters(model), flops_per_step=fpt * result.n_tokens / max(result.steps_done, 1),
        n_tokens=result.n_tokens, resumed_from_step=result.resumed_from_step, gap_features=features,
        measured_gap=result.final_val_loss - result.final_train_loss, device=result.device,
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
