"""Stage 2: pretrain one small language model on the selected, weighted subset.

The flow fans this stage out over the small-model specs (``foreach``). Each model
trains with the one training loop on the selected rows, their importance weights
as per-example loss weights, and records at every evaluation a row for the
generalization-gap zoo: training-data features of the checkpoint and its measured
gap (validation loss - training loss).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable

import numpy as np

from libs.models import ModelSpec, build_model, count_parameters, flops_per_token, model_to_files
from libs.optimizer_state import moments_to_files
from libs.report import Figure, Markdown, Table, loss_curve_figure
from libs.schema import option
from libs.token_data import TokenData
from libs.training import TrainConfig, train_model

__all__ = ["PretrainSmallConfig", "PretrainSmallResult", "run", "report", "subset_for_model"]


def _default_small_models() -> tuple[ModelSpec, ...]:
    return (ModelSpec(name="small_a", n_layer=2, n_embd=64, n_head=2, n_inner=256),
            ModelSpec(name="small_b", n_layer=2, n_embd=64, n_head=2, n_inner=256))


@dataclasses.dataclass(frozen=True)
class PretrainSmallConfig:
    """The small models and how they are pretrained."""

    models: tuple[ModelSpec, ...] = option(doc="the small models, one foreach branch each (names must be unique)",
                                           default_factory=_default_small_models)
    train: TrainConfig = option(doc="training loop settings for every small model",
                                default_factory=lambda: TrainConfig(steps=300, batch_size=16, lr=3e-3,
                                                                    warmup_steps=30, eval_every=50))
    data: str = option("shared", "'shared': every small model trains on the whole selected subset (different "
                       "seeds); 'by_cluster': model i trains on the selected rows of clusters c with c % n == i",
                       choices=("shared", "by_cluster"))

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models is empty; list at least one small model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"small model names must be unique, got {names}; rename the duplicates")


@dataclasses.dataclass(frozen=True)
class PretrainSmallResult:
    name: str
    spec: dict
    model_files: dict[str, bytes]
    init_files: dict[str, bytes]      # the random initialization it trained from (distance-from-init features)
    curve: list[dict[str, float]]
    final_val_loss: float
    final_train_loss: float
    tokens_per_s: float
    n_params: int
    flops: float
    n_train_rows: int
    gap_rows: list[dict]
    device: str
    seconds: float
    # its final AdamW moments (libs.optimizer_state files): what train_large.grown_optimizer = 'carry' grows
    moment_files: dict[str, bytes] | None = None


def subset_for_model(cfg: PretrainSmallConfig, model_index: int, indices: np.ndarray, weights: np.ndarray,
                     assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The selected rows (and weights) that small model ``model_index`` trains on."""
    if cfg.data == "shared":
        return indices, weights
    n_models = len(cfg.models)
    keep = (assignment[indices] % n_models) == model_index
    if not keep.any():
        raise ValueError(f"data='by_cluster' left small model {model_index} with no rows; "
                         "use more clusters, a larger budget, or data='shared'")
    return indices[keep], weights[keep]


def run(cfg: PretrainSmallConfig, spec: ModelSpec, *, data: TokenData, indices: np.ndarray, weights: np.ndarray,
        seed: int, on_eval: Callable | None = None, checkpoint_dir: str | None = None,
        progress: bool = True, train_eval_rows: int = 256, feature_rows: int = 64) -> PretrainSmallResult:
    """Train the small model ``spec`` on the training rows ``indices`` of ``data`` weighted by ``weights``.

    Parameters
    ----------
    data : the tokenized corpus (its vocabulary, sequence length and special tokens shape the model)
    indices : int (m,) selected training rows; weights : float (m,) their loss weights
    on_eval : called as ``on_eval(step, model, record)`` after each evaluation (live cards)
    train_eval_rows, feature_rows : how every checkpoint's gap is measured (``predict_gap`` settings: the
        same for every model of a run and of the LM zoo it is compared with)
    """
    from libs.gap_features import checkpoint_row, probe_for_selection  # heavy-ish import kept local

    if len(indices) != len(weights):
        raise ValueError(f"indices ({len(indices)}) and weights ({len(weights)}) differ in length")
    t0 = time.perf_counter()
    model = build_model(spec, vocab_size=data.vocab_size, n_positions=data.seq_len + 1, seed=seed,
                        bos_token_id=data.bos_id, eos_token_id=data.eos_id)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    init_files = model_to_files(model)
    tokens, lengths = data.train_rows(indices)
    probe = probe_for_selection(data, indices, train_eval_rows=train_eval_rows, feature_rows=feature_rows)   # every validation row; the run's fixed training-evaluation rows
    gap_rows: list[dict] = []

    def record_eval(step: int, m, record: dict) -> None:
        if step > 0:
            gap_rows.append(checkpoint_row(m, probe, model_name=spec.name, step=step, tokens_seen=record["tokens"],
                                           lr=cfg.train.lr, init_state=init_state, seed=seed))
            m.train()
        if on_eval is not None:
            on_eval(step, m, record)

    result = train_model(model, tokens, lengths, data.val_tokens, data.val_lengths, cfg.train, seed=seed,
                         weights=weights, label=f"pretrain_small[{spec.name}]", on_eval=record_eval,
                         checkpoint_dir=checkpoint_dir, progress=progress, keep_moments=True)
    print(f"[pretrain_small[{spec.name}]] final val loss {result.final_val_loss:.4f}, "
          f"{result.tokens_per_s:,.0f} tokens/s", file=sys.stderr, flush=True)
    return PretrainSmallResult(
        name=spec.name, spec=dataclasses.asdict(spec), model_files=model_to_files(model), init_files=init_files,
        curve=result.curve,
        final_val_loss=result.final_val_loss, final_train_loss=result.final_train_loss,
        tokens_per_s=result.tokens_per_s, n_params=count_parameters(model),
        flops=flops_per_token(model, data.seq_len) * result.n_tokens, n_train_rows=len(indices),
        gap_rows=gap_rows, device=result.device, seconds=time.perf_counter() - t0,
        moment_files=moments_to_files(result.moments))


def report(result: PretrainSmallResult) -> list:
    fig = loss_curve_figure(result.curve, result.name + ": loss curve")
    spec = result.spec
    return [
        Markdown(f"## Small model `{result.name}`\n\nFinal validation loss **{result.final_val_loss:.4f}** "
                 f"(training {result.final_train_loss:.4f}), {result.n_params:,} parameters, "
                 f"{result.tokens_per_s:,.0f} tokens/s on {result.device}, {result.flops:.3g} training FLOPs, "
                 f"{result.n_train_rows} selected rows."),
        Table(["family", "layers", "width", "heads", "MLP width"],
              [[spec["family"], spec["n_layer"], spec["n_embd"], spec["n_head"], spec["n_inner"] or 4 * spec["n_embd"]]],
              title="Shape"),
        Figure(fig, title="Loss curve"),
        Table(["step", "train loss", "val loss", "gap"],
              [[r["step"], f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}", f"{r['gap']:.4f}"] for r in result.gap_rows],
              title="Checkpoints recorded for the gap zoo"),
    ]
