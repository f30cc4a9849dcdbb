"""Features of a trained language model that predict its generalization gap, from training data only.

Every feature is meant to transfer across scale (a zoo of small models predicts a larger one):

* Output-layer margin signature (Jiang et al. 2018): for every valid token position the margin
  ``z_y - max_{j != y} z_j`` divided by ``||w_y - w_j||`` (the exact distance of the final
  hidden state to the decision boundary between the true and the runner-up token, for a
  bias-free linear head: no autograd needed), normalised by the hidden representation's
  scale; summarised by Q1, median, Q3 and the upper/lower fences (Q3 + 1.5 IQR, Q1 - 1.5 IQR),
  each signed-log transformed (``sign(x) log(1 + |x|)``).
* Geometric complexity (Dherin et al. 2022): mean over valid positions of the squared Frobenius
  norm of the Jacobian of that position's logits with respect to the input embeddings; a
  Hutchinson estimate (``E_v ||J^T v||^2 = ||J||_F^2``, Gaussian ``v`` zero on padded positions),
  or exact (``n_probes=0``, one backward pass per position and vocabulary entry: small models).
* Per-parameter weight norms: log root-mean-square weight of the matrices, log RMS distance from
  a reference initialization and log distance relative to that initialization's norm (for a
  grown model the reference is the fusion of its components' random initializations).
* Covariates: log parameter count, epochs (tokens seen per unique training token; a grown
  model counts its components' pretraining), log parameters per unique training token, log
  peak learning rate, and the training loss on the fixed training-evaluation subset.

The gap itself (:func:`measure_gap`) is the token-weighted validation loss on every validation
row minus the token-weighted training loss on one fixed training-evaluation subset
(:class:`GapProbe`), shared by every model that is compared.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FEATURE_VERSION", "SIGNATURE_STATS", "margin_signature", "output_margins", "geometric_complexity",
           "valid_positions", "weight_norm_features", "lm_covariates", "lm_features", "GapProbe",
           "shared_train_eval_rows", "probe_for_selection", "unique_tokens", "measure_gap", "checkpoint_row", "measurement_fingerprint"]

FEATURE_VERSION = "lm-gap-v2"   # bump when a feature's definition changes: rows of other versions never mix
SIGNATURE_STATS = ("q1", "median", "q3", "upper_fence", "lower_fence")


def _slog(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def margin_signature(margins: np.ndarray, prefix: str) -> dict[str, float]:
    """Q1, median, Q3 and the two fences of ``margins``, signed-log transformed."""
    margins = np.asarray(margins, dtype=np.float64)
    if margins.size == 0 or not np.isfinite(margins).all():
        raise ValueError(f"{prefix}: margins are empty or not finite; the model or data is broken")
    q1, q2, q3 = np.percentile(margins, [25, 50, 75])
    iqr = q3 - q1
    values = {"q1": q1, "median": q2, "q3": q3, "upper_fence": q3 + 1.5 * iqr, "lower_fence": q1 - 1.5 * iqr}
    return {f"{prefix}_{k}": _slog(v) for k, v in values.items()}


def valid_positions(lengths: np.ndarray, width: int) -> torch.Tensor:
    """(B, width - 1) bool: the next-token positions that have a real target (t < length - 1)."""
    return torch.arange(width - 1)[None, :] < torch.as_tensor(np.asarray(lengths) - 1)[:, None]


@torch.no_grad()
def output_margins(model, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Normalised output margins of every valid position, and the mean NLL.

    Returns (margins (m,), representation scale, mean NLL over the m positions).
    """
    model.eval()
    width = int(np.max(lengths))
    x = torch.as_tensor(np.asarray(tokens)[:, :width], dtype=torch.long)
    inputs, targets = x[:, :-1], x[:, 1:]
    mask = valid_positions(lengths, width)
    out = model(input_ids=inputs, output_hidden_states=True)
    hidden, logits = out.hidden_states[-1], out.logits                         # (B, T, C), (B, T, V)
    hidden, logits, y = hidden[mask].double(), logits[mask].double(), targets[mask]   # (m, C), (m, V), (m,)
    true = logits.gather(1, y[:, None])[:, 0]
    runner = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    w = model.get_output_embeddings().weight.double()                         # (V, C)
    distance = (w[y] - w[runner]).norm(dim=1).clamp_min(1e-12)
    margins = (true - logits.gather(1, runner[:, None])[:, 0]) / distance     # (m,)
    scale = float((hidden - hidden.mean(0)).pow(2).sum(1).mean().sqrt())
    loss = float(F.cross_entropy(logits, y))
    return (margins / max(scale, 1e-12)).numpy(), scale, loss


def geometric_complexity(model, tokens: np.ndarray, lengths: np.ndarray, *, n_probes: int = 2,
                         seed: int = 0) -> float:
    """Mean over valid positions t of ||d logits_t / d input embeddings||_F^2.

    Padded positions enter neither the numerator nor the denominator: the probes are zero
    there (causal attention: a valid position never reads a later, padded one). ``n_probes``
    Gaussian probes give an unbiased Hutchinson estimate; ``n_probes=0`` computes it exactly
    with one backward pass per (position, vocabulary entry): for small models and tests.
    """
    if n_probes < 0:
        raise ValueError(f"n_probes={n_probes} must be >= 0 (0 = exact)")
    model.eval()
    width = int(np.max(lengths))
    x = torch.as_tensor(np.asarray(tokens)[:, :width - 1], dtype=torch.long)
    mask = valid_positions(lengths, width).to(torch.get_default_dtype())    # (B, T)
    embeds = model.get_input_embeddings()(x).detach().requires_grad_(True)   # (B, T, C)
    logits = model(inputs_embeds=embeds).logits                              # (B, T, V)
    total = 0.0
    if n_probes == 0:
        n_t, n_v = logits.shape[1], logits.shape[2]
        for t in range(n_t):
            if not bool(mask[:, t].any()):
                continue
            for c in range(n_v):   # rows are independent: one pass covers position t of every row
                (grad,) = torch.autograd.grad((logits[:, t, c] * mask[:, t]).sum(), embeds, retain_graph=True)
                total += float(grad.double().pow(2).sum())
    else:
        gen = torch.Generator().manual_seed(seed)
        for k in range(n_probes):
            v = torch.randn(logits.shape, generator=gen) * mask[..., None]
            (grad,) = torch.autograd.grad((logits * v).sum(), embeds, retain_graph=k < n_probes - 1)
            total += float(grad.double().pow(2).sum())
        total /= n_probes
    model.zero_grad(set_to_none=True)
    return total / max(float(mask.sum()), 1.0)


def weight_norm_features(model, init_state: dict | None) -> dict[str, float]:
    """Per-parameter (RMS) weight norm of the matrices, and their distance from ``init_state``.

    ``log_rms_weight`` = log sqrt(sum W^2 / n); with ``init_state`` (parameter name -> tensor;
    matrices of another shape or missing names are left out) also ``log_rms_dist_from_init`` =
    log sqrt(sum (W - W0)^2 / n) and ``log_rel_dist_from_init`` = log(||W - W0|| / ||W0||).
    """
    sq, count, dist, init_sq, init_count = 0.0, 0, 0.0, 0.0, 0
    for name, p in model.named_parameters():
        if p.ndim < 2:
            continue
        w = p.detach().double()
        sq += float(w.pow(2).sum())
        count += w.numel()
        if init_state is not None and name in init_state and tuple(init_state[name].shape) == tuple(w.shape):
            w0 = init_state[name].detach().double().cpu()
            dist += float((w.cpu() - w0).pow(2).sum())
            init_sq += float(w0.pow(2).sum())
            init_count += w.numel()
    if count == 0:
        raise ValueError("the model has no weight matrices")
    features = {"log_rms_weight": 0.5 * math.log(max(sq / count, 1e-30))}
    if init_state is not None:
        if init_count == 0:
            raise ValueError("init_state shares no weight matrix (same name and shape) with the model; pass the "
                             "state_dict of the model's own initialization (for a grown model: the fusion of its "
                             "components' initializations)")
        features["log_rms_dist_from_init"] = 0.5 * math.log(max(dist / init_count, 1e-30))
        features["log_rel_dist_from_init"] = 0.5 * math.log(max(dist, 1e-30) / max(init_sq, 1e-30))
    return features


def lm_covariates(*, n_params: int, tokens_seen: float, unique_train_tokens: int, lr: float) -> dict[str, float]:
    """What drives an LM's gap besides its weights: size, epochs over the data, learning rate."""
    if n_params <= 0 or unique_train_tokens <= 0 or lr <= 0 or tokens_seen < 0:
        raise ValueError(f"lm_covariates: n_params={n_params}, unique_train_tokens={unique_train_tokens} and "
                         f"lr={lr} must be > 0 and tokens_seen={tokens_seen} >= 0")
    return {"log_n_params": math.log(n_params), "epochs": float(tokens_seen) / unique_train_tokens,
            "log_params_per_token": math.log(n_params / unique_train_tokens), "log_lr": math.log(lr)}


def lm_features(model, tokens: np.ndarray, lengths: np.ndarray, *, init_state: dict | None = None,
                seed: int = 0, n_probes: int = 2) -> dict[str, float]:
    """Margin signature, geometric complexity and weight norms of ``model`` on the rows given.

    tokens (n, L), lengths (n,): the feature rows (training data only; pass them already chosen).
    """
    if len(tokens) == 0:
        raise ValueError("lm_features needs at least one training row")
    was_training = model.training
    device = next(model.parameters()).device
    model.cpu()
    margins, _, loss = output_margins(model, tokens, lengths)
    features = margin_signature(margins, "out_margin")
    gc = geometric_complexity(model, tokens, lengths, n_probes=n_probes, seed=seed)
    features["log_geometric_complexity"] = math.log(max(gc, 1e-30))
    features.update(weight_norm_features(model, init_state))
    features["feature_rows_loss"] = loss
    model.to(device).train(was_training)
    return features


@dataclasses.dataclass(frozen=True)
class GapProbe:
    """The rows every gap and feature of a comparison is measured on.

    ``train_eval_*``: one fixed subset of training rows that every compared model trained on
    (its training loss is the gap's reference); ``val_*``: every validation row;
    ``feature_*``: the first ``n_feature_rows`` training-evaluation rows (features);
    ``unique_train_tokens``: target tokens in the model's distinct training rows (epochs).
    """

    train_eval_tokens: np.ndarray     # int (k, L)
    train_eval_lengths: np.ndarray    # int (k,)
    val_tokens: np.ndarray            # int (n_val, L)
    val_lengths: np.ndarray           # int (n_val,)
    unique_train_tokens: int
    n_feature_rows: int = 64

    def __post_init__(self) -> None:
        if len(self.train_eval_tokens) == 0 or len(self.val_tokens) == 0:
            raise ValueError("GapProbe needs at least one training-evaluation row and one validation row")
        if self.unique_train_tokens <= 0:
            raise ValueError(f"unique_train_tokens={self.unique_train_tokens} must be > 0")

    @property
    def feature_tokens(self) -> np.ndarray:
        return self.train_eval_tokens[:self.n_feature_rows]

    @property
    def feature_lengths(self) -> np.ndarray:
        return self.train_eval_lengths[:self.n_feature_rows]


def shared_train_eval_rows(candidate_rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` distinct rows drawn (seeded) from ``candidate_rows``: the fixed training-evaluation subset.

    Pass rows every compared model trains on (the LM zoo: its smallest training subset, which
    every larger one contains; GrowthFlow: the selected rows, shared by the small models and
    both large arms).
    """
    rows = np.unique(np.asarray(candidate_rows))
    if len(rows) == 0:
        raise ValueError("shared_train_eval_rows: no candidate rows")
    return np.sort(np.random.default_rng([seed, 7]).choice(rows, min(k, len(rows)), replace=False))


def probe_for_selection(data, indices: np.ndarray, *, train_eval_rows: int = 256,
                        feature_rows: int = 64) -> GapProbe:
    """The :class:`GapProbe` of a GrowthFlow run: every validation row, and ``train_eval_rows`` of the
    selected rows ``indices`` (the same for every model that trains on them: the draw does not depend
    on the model's seed). ``data`` is a :class:`libs.token_data.TokenData`."""
    rows = shared_train_eval_rows(indices, train_eval_rows, seed=0)
    return GapProbe(train_eval_tokens=data.train_tokens[rows], train_eval_lengths=data.train_lengths[rows],
                    val_tokens=data.val_tokens, val_lengths=data.val_lengths,
                    unique_train_tokens=unique_tokens(data.train_lengths, indices), n_feature_rows=feature_rows)


def unique_tokens(lengths: np.ndarray, rows: np.ndarray) -> int:
    """Target tokens in the distinct ``rows`` (a selection drawn with replacement counts each row once)."""
    return int((np.asarray(lengths)[np.unique(np.asarray(rows))].astype(np.int64) - 1).sum())


def measure_gap(model, probe: GapProbe, *, batch_size: int = 128) -> dict[str, float]:
    """Token-weighted validation loss on every validation row, training loss on the fixed subset, and the gap."""
    from libs.training import per_example_loss

    device = next(model.parameters()).device
    losses = {}
    for split, tokens, lengths in (("val", probe.val_tokens, probe.val_lengths),
                                   ("train", probe.train_eval_tokens, probe.train_eval_lengths)):
        per_row = per_example_loss(model, tokens, lengths, batch_size=batch_size, device=device)
        n = np.asarray(lengths, dtype=np.float64) - 1
        losses[split] = float((per_row * n).sum() / n.sum())
    return {"val_loss": losses["val"], "train_loss": losses["train"], "gap": losses["val"] - losses["train"]}


def checkpoint_row(model, probe: GapProbe, *, model_name: str, step: int, tokens_seen: float, lr: float,
                   init_state: dict | None, seed: int = 0, key: str = "", n_probes: int = 2) -> dict:
    """One gap-zoo row (or a target's): features, covariates, measured gap and losses of ``model`` now.

    ``key`` identifies the model across runs for de-duplication (config fingerprint, seed, name).
    """
    from libs.models import count_parameters

    measured = measure_gap(model, probe)
    features = lm_features(model, probe.feature_tokens, probe.feature_lengths, init_state=init_state, seed=seed,
                           n_probes=n_probes)
    features.update(lm_covariates(n_params=count_parameters(model), tokens_seen=tokens_seen,
                                  unique_train_tokens=probe.unique_train_tokens, lr=lr))
    features["train_loss"] = measured["train_loss"]
    return {"model": model_name, "key": key or model_name, "step": int(step), "features": features,
            "gap": measured["gap"], "val_loss": measured["val_loss"], "train_loss": measured["train_loss"]}


def measurement_fingerprint(n_train_eval_rows: int, n_feature_rows: int, n_val_rows: int = 0) -> str:
    """Fingerprint of how rows are measured (``n_val_rows`` 0: every validation row): other recipes never pool."""
    from libs.fingerprint import settings_fingerprint

    recipe = {"version": FEATURE_VERSION, "n_train_eval_rows": int(n_train_eval_rows),
              "n_feature_rows": int(n_feature_rows)}
    if n_val_rows:
        recipe["n_val_rows"] = int(n_val_rows)
    return settings_fingerprint(recipe)
