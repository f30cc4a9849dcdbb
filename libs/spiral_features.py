"""Gap features of small multilayer perceptrons on 2-D inputs (the spiral zoo, GapZooFlow), many networks at once.

Per-layer margin signatures (Jiang et al. 2018), exact geometric complexity (Dherin et al. 2022),
weight norms, training error under input perturbations and on smoothed resamples of the training
set, and data features (k-NN leave-one-out error, nearest-neighbour distance); all from training
data only. The language-model features are in :mod:`libs.gap_features`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SIGNATURE_STATS", "SIGNATURE_VARIANTS", "JIANG_FLOOR", "SIGNATURE_GROUPS", "mlp_activations", "signature_of", "mlp_layer_margins", "mlp_geometric_complexity",
           "mlp_perturbed_error", "median_nn_distance", "SmoothedProbes", "smoothed_probes", "mlp_smoothed_error",
           "knn_loo_error", "mlp_gap_features"]

# ---------------------------------------------------------------------------------------------
# Small multilayer perceptrons on 2-D inputs (the spiral zoo, GapZooFlow), many networks at once.
#
# A batch of G networks of one shape is a list of weights ``(G, d_in, d_out)`` and biases
# ``(G, 1, d_out)``, layer by layer; hidden layers are ReLU, the last layer gives the logits.
# One backward pass gives every network's and every example's gradient at once, because an
# example's output depends only on its own activations in its own network.
# ---------------------------------------------------------------------------------------------

SIGNATURE_STATS = ("q1", "median", "q3", "upper_fence", "lower_fence")
SIGNATURE_GROUPS = ("in", "h1", "hlast", "hmean", "out")   # input, first and last hidden, mean over hidden, logits


def mlp_activations(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's activations of G MLPs: [input (G, n, 2), hidden (G, n, w) ..., logits (G, n, C)].

    ``x`` is (n, d) shared by the networks or (G, n, d). Hidden activations are after the ReLU.
    """
    g = weights[0].shape[0]
    h = x.expand(g, *x.shape) if x.ndim == 2 else x                          # (G, n, d)
    acts = [h]
    for layer, (w, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b, h, w)                                           # (G, n, d_out)
        if layer < len(weights) - 1:
            h = torch.relu(h)
        acts.append(h)
    return acts


def _signed_log(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.log1p(t.abs())


JIANG_FLOOR = 1e-6   # the smallest statistic Jiang's variant takes the log of (see signature_of)
SIGNATURE_VARIANTS = ("signed_log", "jiang")


def signature_of(margins: torch.Tensor, variant: str = "signed_log") -> torch.Tensor:
    """Margin signature of each row of ``margins`` (G, n): (G, 5) = Q1, median, Q3, upper and lower fence.

    ``variant="signed_log"``: every defined margin (negative ones, the misclassified examples,
    included) and ``sign(s) log(1 + |s|)`` of each statistic ``s``; the same statistics, in the
    same order (``SIGNATURE_STATS``), as :func:`libs.gap_features.margin_signature`.

    ``variant="jiang"`` (Jiang et al. 2018): the positive margins only (correctly classified
    examples) and the plain log of each statistic. A fence can fall outside the positive
    margins (the lower fence is often negative): every statistic is first clipped from below
    to the smallest positive margin of its row, and a row without any positive margin gets
    ``log(JIANG_FLOOR)`` everywhere (our choices: the log is undefined there).

    NaN entries (examples without a defined margin, see :func:`mlp_layer_margins`) are left out;
    in the signed-log variant a row with no defined margin at all gets a NaN signature (the
    caller drops that network).
    """
    if variant not in SIGNATURE_VARIANTS:
        raise ValueError(f"signature_of: unknown variant {variant!r}; choose from {SIGNATURE_VARIANTS}")
    margins = margins.double()
    if torch.isinf(margins).any():
        raise ValueError("signature_of: margins are infinite; the network or data is broken")
    if variant == "jiang":
        margins = torch.where(margins > 0, margins, torch.tensor(float("nan"), dtype=margins.dtype))
    q = torch.nanquantile(margins, torch.tensor([0.25, 0.5, 0.75], dtype=margins.dtype), dim=1)   # (3, G)
    q1, q2, q3 = q
    iqr = q3 - q1
    stats = torch.stack([q1, q2, q3, q3 + 1.5 * iqr, q1 - 1.5 * iqr], dim=1)                  # (G, 5)
    if variant == "signed_log":
        return _signed_log(stats)
    smallest = torch.where(torch.isnan(margins), torch.inf, margins).min(1).values           # (G,): inf if none
    stats = torch.maximum(stats, smallest[:, None])
    return torch.log(torch.nan_to_num(stats, nan=JIANG_FLOOR).clamp_min(JIANG_FLOOR))


def mlp_layer_margins(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor,
                      y: torch.Tensor) -> list[torch.Tensor]:
    """Jiang et al. (2018) normalized margins at every layer of G MLPs: a list of (G, n) tensors.

    At layer l (input, each hidden layer, logits), for example i with label y and runner-up class
    j = argmax_{k != y} f_k: ``(f_y - f_j) / ||d(f_y - f_j)/d h_l||``, the first-order distance of
    h_l to the decision boundary between y and j, divided by the layer's spread
    ``sqrt(E ||h_l - E h_l||^2)`` over the examples (Jiang's total-variation normalization, which
    makes the margin invariant to rescaling the layer). Computed from the data given (pass training
    data only).

    Where the margin's gradient is exactly zero (every ReLU on the example's path is off, so the
    boundary is locally flat and the first-order distance is undefined) the margin is NaN; a
    layer with no spread at all (a constant representation) gives NaN margins for every example.
    """
    with torch.enable_grad():
        g = weights[0].shape[0]
        xin = (x.expand(g, *x.shape) if x.ndim == 2 else x).to(weights[0].dtype).detach().clone()
        acts = mlp_activations(weights, biases, xin.requires_grad_(True))    # a leaf per network
        logits = acts[-1]                                                    # (G, n, C)
        labels = y.expand(logits.shape[0], -1)[..., None]                    # (G, n, 1)
        true = logits.gather(2, labels)[..., 0]
        runner = logits.scatter(2, labels, float("-inf")).argmax(2, keepdim=True)
        diff = true - logits.gather(2, runner)[..., 0]                       # (G, n)
        grads = torch.autograd.grad(diff.sum(), acts)
    out = []
    nan = torch.tensor(float("nan"), dtype=diff.dtype)
    for h, grad in zip(acts, grads):
        spread = (h - h.mean(1, keepdim=True)).pow(2).sum(2).mean(1).sqrt().detach()   # (G,)
        norm = grad.norm(dim=2)                                               # (G, n)
        distance = torch.where(norm > 0, diff.detach() / norm.clamp_min(1e-300), nan)
        out.append(torch.where(spread[:, None] > 0, distance / spread.clamp_min(1e-300)[:, None], nan))
    return out


def mlp_geometric_complexity(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Dherin et al. (2022) geometric complexity of G MLPs: (G,) mean over examples of ||d logits/d x||_F^2.

    Exact: one backward pass per output class (the inputs are 2-D, the outputs a few classes).
    """
    with torch.enable_grad():
        g = weights[0].shape[0]
        xin = (x.expand(g, *x.shape) if x.ndim == 2 else x).to(weights[0].dtype).detach().clone().requires_grad_(True)
        logits = mlp_activations(weights, biases, xin)[-1]                   # (G, n, C)
        total = torch.zeros(g, dtype=logits.dtype)
        for c in range(logits.shape[2]):
            (grad,) = torch.autograd.grad(logits[..., c].sum(), xin, retain_graph=c < logits.shape[2] - 1)
            total += grad.pow(2).sum(2).mean(1)                               # (G,)
    return total.detach()


def mlp_perturbed_error(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                        sigma: float, *, n_draws: int = 16, seed: int = 0) -> torch.Tensor:
    """(G,) error of G MLPs on their training points moved by Gaussian noise of std ``sigma`` (labels kept).

    A robustness measure from training data only (in the spirit of the sharpness and
    perturbation measures of Jiang et al. 2020): a network that memorised its points with
    thin decision regions around them loses them under small input perturbations. The
    same ``n_draws`` noise draws (from ``seed``) are used for every network.
    """
    if sigma < 0 or n_draws < 1:
        raise ValueError(f"mlp_perturbed_error: sigma={sigma} must be >= 0 and n_draws={n_draws} >= 1")
    gen = torch.Generator().manual_seed(seed)
    x = x.to(weights[0].dtype)
    noise = torch.randn((n_draws, *x.shape), generator=gen, dtype=x.dtype) * sigma          # (D, n, d)
    xs = (x[None] + noise).reshape(-1, x.shape[1])                                            # (D n, d)
    with torch.no_grad():
        logits = mlp_activations(weights, biases, xs)[-1]                                     # (G, D n, C)
        return (logits.argmax(2) != y.repeat(n_draws)).double().mean(1)


def median_nn_distance(x: np.ndarray) -> float:
    """Median over points of the Euclidean distance to the nearest other point (the data's own length scale)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("median_nn_distance needs at least 2 points")
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(2)
    np.fill_diagonal(d, np.inf)
    return float(np.median(np.sqrt(d.min(1))))


def knn_loo_error(x: np.ndarray, y: np.ndarray, k: int = 5) -> float:
    """Leave-one-out error of the k-nearest-neighbour majority vote on a labelled set (a property of the data).

    On training data only, it estimates how much the classes overlap and how noisy the labels
    are; ties in the vote go to the smallest label.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    n = len(y)
    if not 1 <= k < n:
        raise ValueError(f"knn_loo_error: k={k} must be in 1..n-1 (n={n})")
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(2)                                        # (n, n)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1, kind="stable")[:, :k]                                  # (n, k)
    votes = np.zeros((n, int(y.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(n), k), y[neighbours].ravel()), 1)
    return float(np.mean(votes.argmax(1) != y))


@dataclasses.dataclass(frozen=True)
class SmoothedProbes:
    """Probe points around a training set and kernel estimates of their class probabilities.

    ``x`` (m, d): training points moved by Gaussian noise of std ``bandwidth``; ``label_probs``
    (m, C): at each probe, the Gaussian-kernel (same bandwidth) class frequencies of the *other*
    training points (the probe's own source point left out). A smoothed resample of the training
    distribution with labels from its neighbours: the networks' error on it estimates their error
    between the training points, from training data only.
    """

    scale: float
    bandwidth: float
    x: torch.Tensor
    label_probs: torch.Tensor


def smoothed_probes(x: np.ndarray, y: np.ndarray, n_classes: int, *, scales: tuple[float, ...] = (0.5, 1.0, 2.0),
                    n_draws: int = 8, seed: int = 0) -> list[SmoothedProbes]:
    """One :class:`SmoothedProbes` per scale; bandwidth = scale x the median nearest-neighbour distance of ``x``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if len(x) < 2 or n_draws < 1:
        raise ValueError(f"smoothed_probes needs at least 2 points and n_draws >= 1 (got {len(x)}, {n_draws})")
    d_nn = max(median_nn_distance(x), 1e-12)
    onehot = np.eye(n_classes)[y]                                                     # (n, C)
    rng = np.random.default_rng([seed, 23])
    source = np.repeat(np.arange(len(x)), n_draws)                                    # (m,)
    out = []
    for scale in scales:
        h = scale * d_nn
        probes = x[source] + h * rng.standard_normal((len(source), x.shape[1]))      # (m, d)
        d2 = ((probes[:, None, :] - x[None, :, :]) ** 2).sum(2)                       # (m, n)
        kernel = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * h * h))              # stable: rows scaled by a constant
        kernel[np.arange(len(source)), source] = 0.0                                  # leave the source point out
        counts = kernel @ onehot                                                      # (m, C)
        total = counts.sum(1, keepdims=True)
        probs = np.where(total > 0, counts / np.where(total > 0, total, 1.0), 1.0 / n_classes)
        out.append(SmoothedProbes(scale, h, torch.as_tensor(probes), torch.as_tensor(probs)))
    return out


def mlp_smoothed_error(weights: list[torch.Tensor], biases: list[torch.Tensor], probes: SmoothedProbes) -> torch.Tensor:
    """(G,) expected error of G MLPs on smoothed probes: mean over probes of 1 - p_hat(predicted class | probe)."""
    with torch.no_grad():
        pred = mlp_activations(weights, biases, probes.x.to(weights[0].dtype))[-1].argmax(2)      # (G, m)
        probs = probes.label_probs.to(torch.float64)                                               # (m, C)
        hit = probs.gather(1, pred.T).T                                                            # (G, m)
    return 1.0 - hit.mean(1)


def mlp_gap_features(weights: list[torch.Tensor], biases: list[torch.Tensor], init_weights: list[torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor, *,
                     perturbation_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2),
                     probes: list[SmoothedProbes] | None = None,
                     seed: int = 0) -> tuple[list[dict[str, float]], list[np.ndarray]]:
    """Gap features of G trained MLPs from their training data ``x`` (n, d), ``y`` (n,).

    Returns
    -------
    features : one dict per network: margin signatures (``SIGNATURE_STATS``) of the input layer
        (``in_*``), the first and last hidden layers (``h1_*``, ``hlast_*``), the mean over hidden
        layers (``hmean_*``) and the logits (``out_*``), signed-log (:func:`signature_of`), and the same
        in Jiang et al.'s variant (positive margins, log: ``jiang_in_*`` ... ``jiang_out_*``); ``log_geometric_complexity``;
        ``log_weight_norm`` (log of the root summed squared Frobenius norms of the weight matrices);
        ``log_dist_from_init``; ``train_loss``; ``train_error``; ``perturbed_error_<sigma>`` (the
        training error under input noise of each std in ``perturbation_sigmas``, noise from
        ``seed``); ``smoothed_error_<scale>`` (:func:`mlp_smoothed_error` on each of ``probes``;
        by default :func:`smoothed_probes` of ``x``, ``y``: pass them in to share them between
        batches of networks on the same training set).
    layer_signatures : one (n_hidden_layers + 2, 5) float64 array per network (input, hidden
        layers, logits): the signature sequence over layers, for sequence models.

    A collapsed network (constant logits) gets non-finite features: its geometric complexity is
    0 (log: -inf) and its margins are undefined (NaN); callers drop it.
    """
    with torch.no_grad():
        logits = mlp_activations(weights, biases, x.to(weights[0].dtype))[-1]   # (G, n, C)
        g = logits.shape[0]
        labels = y.expand(g, -1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[2]), labels.reshape(-1),
                               reduction="none").view(g, -1).mean(1)
        error = (logits.argmax(2) != labels).double().mean(1)
        sq = sum(w.double().pow(2).sum((1, 2)) for w in weights)
        dist = sum((w.double() - w0.double()).pow(2).sum((1, 2)) for w, w0 in zip(weights, init_weights))
    margins = mlp_layer_margins(weights, biases, x, y)
    sigs = torch.stack([signature_of(m) for m in margins], dim=1)                         # (G, L, 5)
    jiang = torch.stack([signature_of(m, "jiang") for m in margins], dim=1)               # (G, L, 5)
    gc = mlp_geometric_complexity(weights, biases, x)
    perturbed = {f"perturbed_error_{sigma:g}": mlp_perturbed_error(weights, biases, x, y, sigma, seed=seed)
                 for sigma in perturbation_sigmas}
    if probes is None:
        probes = smoothed_probes(x.numpy(), y.numpy(), logits.shape[2], seed=seed)
    perturbed |= {f"smoothed_error_{p.scale:g}": mlp_smoothed_error(weights, biases, p) for p in probes}
    rows, seqs = [], []
    for k in range(g):
        row = {}
        for prefix, per_layer in (("", sigs[k]), ("jiang_", jiang[k])):
            hidden = per_layer[1:-1]
            for layer_name, sig in zip(SIGNATURE_GROUPS, (per_layer[0], hidden[0], hidden[-1], hidden.mean(0),
                                                           per_layer[-1])):
                row.update({f"{prefix}{layer_name}_{s}": float(v) for s, v in zip(SIGNATURE_STATS, sig)})
        # a network whose logits do not depend on its input (collapsed: every ReLU dead) has gc = 0: -inf here
        row["log_geometric_complexity"] = math.log(float(gc[k])) if float(gc[k]) > 0 else float("-inf")
        row["log_weight_norm"] = 0.5 * math.log(max(float(sq[k]), 1e-12))
        row["log_dist_from_init"] = 0.5 * math.log(max(float(dist[k]), 1e-12))
        row["train_loss"] = float(loss[k])
        row["train_error"] = float(error[k])
        row.update({name: float(err[k]) for name, err in perturbed.items()})
        rows.append(row)
        seqs.append(sigs[k].numpy().copy())
    return rows, seqs
