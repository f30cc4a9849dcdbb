"""Features of a trained language model that predict its generalization gap, from training data only.

* Output-layer margin signature (Jiang et al. 2018): for every token position the margin
  ``z_y - max_{j != y} z_j`` divided by ``||w_y - w_j||`` (the exact distance of the final
  hidden state to the decision boundary between the true and the runner-up token, for a
  bias-free linear head: no autograd needed), normalised by the hidden representation's
  scale; summarised by Q1, median, Q3 and the upper/lower fences (Q3 + 1.5 IQR, Q1 - 1.5 IQR),
  each signed-log transformed (``sign(x) log(1 + |x|)``).
* Geometric complexity (Dherin et al. 2022): mean squared Frobenius norm of the Jacobian of
  the logits with respect to the input embeddings, per position, by a Hutchinson estimate
  (``E_v ||J^T v||^2 = ||J||_F^2`` for Gaussian ``v``).
* Weight norms: log of the summed squared Frobenius norms of the matrices, and log distance
  from initialization.
* The training loss on the same rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["margin_signature", "output_margins", "geometric_complexity", "lm_features"]


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


def _hidden_and_logits(model, x: torch.Tensor):
    out = model(input_ids=x, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@torch.no_grad()
def output_margins(model, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Normalised output margins of every valid position, and the mean NLL.

    Returns (margins (m,), representation scale, training loss).
    """
    model.eval()
    x = torch.as_tensor(tokens, dtype=torch.long)
    width = int(lengths.max())
    x = x[:, :width]
    inputs, targets = x[:, :-1], x[:, 1:]
    mask = torch.arange(width - 1)[None, :] < torch.as_tensor(lengths - 1)[:, None]
    hidden, logits = _hidden_and_logits(model, inputs)                         # (B, T, C), (B, T, V)
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
    """Hutchinson estimate of the mean over positions of ||d logits_t / d input embeddings||_F^2."""
    model.eval()
    width = int(lengths.max())
    x = torch.as_tensor(tokens[:, :width - 1], dtype=torch.long)
    embeds = model.get_input_embeddings()(x).detach().requires_grad_(True)     # (B, T, C)
    logits = model(inputs_embeds=embeds).logits                                # (B, T, V)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for k in range(n_probes):
        v = torch.randn(logits.shape, generator=gen)
        (grad,) = torch.autograd.grad((logits * v).sum(), embeds, retain_graph=k < n_probes - 1)
        total += float(grad.pow(2).sum())
    n_positions = int((lengths - 1).sum())
    model.zero_grad(set_to_none=True)
    return total / n_probes / max(n_positions, 1)


def lm_features(model, tokens: np.ndarray, lengths: np.ndarray, *, init_state: dict | None = None,
                seed: int = 0, max_rows: int = 64) -> dict[str, float]:
    """All gap features of ``model`` on up to ``max_rows`` training rows (tokens (n, L), lengths (n,))."""
    if len(tokens) == 0:
        raise ValueError("lm_features needs at least one training row")
    rows = np.random.default_rng(seed).permutation(len(tokens))[:max_rows]
    tokens, lengths = np.asarray(tokens)[rows], np.asarray(lengths)[rows]
    was_training = model.training
    device = next(model.parameters()).device
    model.cpu()
    margins, scale, loss = output_margins(model, tokens, lengths)
    features = margin_signature(margins, "out_margin")
    features["log_repr_scale"] = math.log(max(scale, 1e-12))
    features["log_geometric_complexity"] = math.log(max(geometric_complexity(model, tokens, lengths, seed=seed), 1e-12))
    params = dict(model.named_parameters())
    sq = sum(float(p.detach().double().pow(2).sum()) for p in params.values() if p.ndim >= 2)
    features["log_weight_norm"] = 0.5 * math.log(max(sq, 1e-12))
    if init_state is not None:
        dist = sum(float((p.detach().double() - init_state[n].double()).pow(2).sum())
                   for n, p in params.items() if p.ndim >= 2 and n in init_state)
        features["log_dist_from_init"] = 0.5 * math.log(max(dist, 1e-12))
    features["train_loss"] = loss
    model.to(device).train(was_training)
    return features
