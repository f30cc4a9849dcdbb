"""The spiral gap zoo: data, batched MLP training, features against hand/autograd values, splits, predictors,
metrics, errors; and GapZooFlow end to end through the Runner on config/gap_zoo/tiny.toml."""

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from libs.gap_features import margin_signature
from libs.gap_predictors import r2_score
from libs.spiral_features import (JIANG_FLOOR, SIGNATURE_STATS, knn_loo_error, median_nn_distance, mlp_activations,
                                  mlp_gap_features, mlp_geometric_complexity, mlp_layer_margins, mlp_perturbed_error,
                                  signature_of)
from libs.spiral_predictors import (FEATURE_SETS, OUT_OF_DISTRIBUTION_SPLITS, SPLITS, ZOO_PREDICTORS,
                                    LayerSequenceRegressor, ZooPredictor, bootstrap_r2, conditioned_ranking_information,
                                    feature_columns, load_predictors, split_folds, within_family_r2)
from libs.mlp_zoo import (NetworkSpec, _evaluate, _train_group, learning_rate, sample_networks, sample_tasks,
                          train_networks)
from libs.spiral import SpiralTask, make_spiral_data, sample_spiral
from steps import fit_predictors, gap_zoo_config, train_shard

ROOT = Path(__file__).resolve().parent.parent
FLOW = str(ROOT / "flows" / "gap_zoo_flow.py")
TINY = str(ROOT / "config" / "gap_zoo" / "tiny.toml")


def _net(g: int, dims: list[int], seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(g, a, b, generator=gen, dtype=dtype) / math.sqrt(a) for a, b in zip(dims[:-1], dims[1:])]
    biases = [0.1 * torch.randn(g, 1, b, generator=gen, dtype=dtype) for b in dims[1:]]
    return weights, biases


def _sequential(weights, biases, k: int) -> torch.nn.Sequential:
    """Network ``k`` of a batch as an ordinary torch.nn.Sequential (Linear + ReLU), float64."""
    layers = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        lin = torch.nn.Linear(w.shape[1], w.shape[2], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w[k].T)
            lin.bias.copy_(b[k, 0])
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ spiral data

def test_spiral_data_is_deterministic_and_balanced():
    task = SpiralTask(arms=3, turns=1.25, noise=0.1, n_train=300, label_noise=0.0, n_test=600)
    a, b = make_spiral_data(task, 7), make_spiral_data(task, 7)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = make_spiral_data(task, 8)
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_train[:50], a.x_test[:50])          # train and test are independent draws
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64 and a.x_train.shape == (300, 2)
    assert np.bincount(a.y_train).tolist() == [100, 100, 100]
    assert np.bincount(a.y_test).tolist() == [200, 200, 200]


def test_spiral_points_lie_on_their_arm_without_noise():
    task = SpiralTask(arms=4, turns=0.75, noise=0.0, n_train=400)
    x, y = sample_spiral(task, 400, np.random.default_rng(0))
    radius = np.linalg.norm(x, axis=1)                                # radius = position t along the arm
    angle = 2 * np.pi * (task.turns * radius + y / task.arms)
    np.testing.assert_allclose(x, radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1), atol=1e-5)


def test_label_noise_flips_the_requested_fraction_to_other_classes():
    """Without input noise a point's arm is readable from its position; label noise moves that fraction off it."""
    task = SpiralTask(arms=3, turns=1.25, noise=0.0, n_train=20000, label_noise=0.2)
    x, y = sample_spiral(task, 20000, np.random.default_rng(5))
    t = np.linalg.norm(x, axis=1)
    arm = np.round((np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi) - task.turns * t) * task.arms) % task.arms
    assert abs(np.mean(arm != y) - 0.2) < 0.015
    _, y_clean = sample_spiral(dataclasses.replace(task, label_noise=0.0), 20000, np.random.default_rng(5))
    assert np.bincount(y_clean).tolist() == [6667, 6667, 6666]


def test_spiral_task_rejects_bad_knobs():
    with pytest.raises(ValueError, match="at least 2 arms"):
        SpiralTask(arms=1)
    with pytest.raises(ValueError, match="label_noise"):
        SpiralTask(label_noise=1.0)
    with pytest.raises(ValueError, match="turns"):
        SpiralTask(turns=0)


def test_sample_tasks_cycles_arms_and_is_deterministic():
    kw = dict(arms=(2, 3, 4), turns=(0.75, 1.5), noises=(0.05, 0.2), n_trains=(100, 200), label_noises=(0.0, 0.1),
              n_test=500)
    a, b = sample_tasks(9, seed=1, **kw), sample_tasks(9, seed=1, **kw)
    assert a == b and [t.arms for t in a] == [2, 3, 4] * 3
    assert sample_tasks(9, seed=2, **kw) != a


# ------------------------------------------------------------------------------------------ features

def test_geometric_complexity_of_a_linear_map_is_its_squared_frobenius_norm():
    weights, biases = _net(3, [2, 5])                                 # G=3 linear maps R^2 -> R^5
    x = torch.randn(40, 2, dtype=torch.float64)
    gc = mlp_geometric_complexity(weights, biases, x)
    np.testing.assert_allclose(gc.numpy(), weights[0].pow(2).sum((1, 2)).numpy(), rtol=1e-12)


def test_geometric_complexity_matches_autograd_jacobians():
    weights, biases = _net(2, [2, 7, 6, 3], seed=1)
    x = torch.randn(25, 2, dtype=torch.float64)
    gc = mlp_geometric_complexity(weights, biases, x)
    for k in range(2):
        net = _sequential(weights, biases, k)
        ref = np.mean([torch.autograd.functional.jacobian(net, xi).pow(2).sum().item() for xi in x])
        assert gc[k].item() == pytest.approx(ref, rel=1e-10)


def test_margins_of_a_linear_classifier_by_hand():
    """One linear layer: input margin = (f_y - f_j) / ||w_y - w_j|| / spread(x); output = (f_y - f_j) / sqrt 2 / spread(f)."""
    weights, biases = _net(2, [2, 3], seed=2)
    x = torch.randn(30, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    margins = mlp_layer_margins(weights, biases, x, y)
    assert len(margins) == 2 and margins[0].shape == (2, 30)
    for k in range(2):
        w, b = weights[0][k].numpy(), biases[0][k, 0].numpy()        # (2, 3), (3,)
        xn, yn = x.numpy(), y.numpy()
        f = xn @ w + b
        for i in range(30):
            others = [c for c in range(3) if c != yn[i]]
            j = max(others, key=lambda c: f[i, c])
            diff = f[i, yn[i]] - f[i, j]
            spread_x = np.sqrt(((xn - xn.mean(0)) ** 2).sum(1).mean())
            spread_f = np.sqrt(((f - f.mean(0)) ** 2).sum(1).mean())
            assert margins[0][k, i].item() == pytest.approx(diff / np.linalg.norm(w[:, yn[i]] - w[:, j]) / spread_x,
                                                            rel=1e-10)
            assert margins[1][k, i].item() == pytest.approx(diff / np.sqrt(2) / spread_f, rel=1e-10)


def test_hidden_layer_margins_match_per_example_autograd():
    weights, biases = _net(2, [2, 6, 5, 4], seed=3)
    x = torch.randn(12, 2, dtype=torch.float64)
    y = torch.randint(0, 4, (12,))
    margins = mlp_layer_margins(weights, biases, x, y)
    acts = mlp_activations(weights, biases, x)
    for k in range(2):
        for layer in (1, 2):                                          # the two hidden layers
            h_all = acts[layer][k]
            spread = (h_all - h_all.mean(0)).pow(2).sum(1).mean().sqrt().item()
            rest = torch.nn.Sequential(*[m for m in _sequential(weights, biases, k)][2 * layer - 1:])  # ReLU is first
            for i in range(12):
                h = h_all[i].detach().clone().requires_grad_(True)
                f = rest[1:](h)                                       # h is already after the ReLU
                yi = int(y[i])
                j = int(f.detach().clone().index_fill_(0, torch.tensor([yi]), -math.inf).argmax())
                diff = f[yi] - f[j]
                (grad,) = torch.autograd.grad(diff, h)
                ref = diff.item() / grad.norm().item() / spread
                assert margins[layer][k, i].item() == pytest.approx(ref, rel=1e-9)


def test_signature_of_matches_the_numpy_margin_signature():
    m = torch.randn(3, 101, dtype=torch.float64) * 2 + 0.5
    sig = signature_of(m)
    for k in range(3):
        ref = margin_signature(m[k].numpy(), "x")
        np.testing.assert_allclose(sig[k].numpy(), [ref[f"x_{s}"] for s in SIGNATURE_STATS], rtol=1e-12)
    # undefined margins (NaN) are left out; a network without any defined margin gets a NaN signature
    with_nan = torch.cat([m[:1], torch.full((1, 101), float("nan"))], dim=0)
    with_nan[0, :10] = float("nan")
    sig = signature_of(with_nan)
    ref = margin_signature(m[0, 10:].numpy(), "x")
    np.testing.assert_allclose(sig[0].numpy(), [ref[f"x_{s}"] for s in SIGNATURE_STATS], rtol=1e-12)
    assert torch.isnan(sig[1]).all()
    with pytest.raises(ValueError, match="infinite"):
        signature_of(torch.tensor([[1.0, float("inf")]]))


def test_jiangs_variant_keeps_positive_margins_and_takes_the_log():
    m = torch.tensor([[-3.0, -1.0, 0.5, 1.0, 2.0, 4.0, 8.0, float("nan")],
                      [-1.0, -2.0, -0.5, -4.0, float("nan"), -1.0, -1.0, -1.0]], dtype=torch.float64)
    sig = signature_of(m, "jiang")
    positive = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    q1, q2, q3 = np.percentile(positive, [25, 50, 75])
    iqr = q3 - q1
    expected = np.log(np.maximum([q1, q2, q3, q3 + 1.5 * iqr, q1 - 1.5 * iqr], positive.min()))   # fence clipped
    np.testing.assert_allclose(sig[0].numpy(), expected, rtol=1e-12)
    assert q1 - 1.5 * iqr < positive.min()                                   # the clipping mattered here
    np.testing.assert_allclose(sig[1].numpy(), np.full(5, math.log(JIANG_FLOOR)))   # no positive margin at all
    with pytest.raises(ValueError, match="unknown variant"):
        signature_of(m, "cubic")


def test_margins_are_undefined_where_every_relu_is_off_and_collapsed_networks_are_flagged():
    weights, biases = _net(2, [2, 4, 3], seed=5)
    x = torch.randn(20, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    biases[0][1] = -100.0                             # network 1: its hidden ReLUs are off for every input
    margins = mlp_layer_margins(weights, biases, x, y)
    assert torch.isfinite(margins[0][0]).all() and torch.isnan(margins[0][1]).all()
    rows, _ = mlp_gap_features(weights, biases, weights, x, y)
    assert all(math.isfinite(v) for v in rows[0].values())
    assert rows[1]["log_geometric_complexity"] == -math.inf and math.isnan(rows[1]["in_median"])


def test_mlp_gap_features_by_hand():
    weights, biases = _net(2, [2, 8, 8, 3], seed=4)
    init = [w * 0.5 for w in weights]
    x = torch.randn(50, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    rows, seqs = mlp_gap_features(weights, biases, init, x, y)
    assert len(rows) == 2 and seqs[0].shape == (4, 5)                 # input, 2 hidden layers, logits
    for k in range(2):
        net = _sequential(weights, biases, k)
        logits = net(x)
        assert rows[k]["train_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-10)
        assert rows[k]["train_error"] == pytest.approx((logits.argmax(1) != y).double().mean().item())
        sq = sum(w[k].pow(2).sum().item() for w in weights)
        assert rows[k]["log_weight_norm"] == pytest.approx(0.5 * math.log(sq), rel=1e-12)
        dist = sum((0.5 * w[k]).pow(2).sum().item() for w in weights)
        assert rows[k]["log_dist_from_init"] == pytest.approx(0.5 * math.log(dist), rel=1e-12)
        gc = mlp_geometric_complexity(weights, biases, x)[k].item()
        assert rows[k]["log_geometric_complexity"] == pytest.approx(math.log(gc), rel=1e-12)
        np.testing.assert_allclose([rows[k][f"out_{s}"] for s in SIGNATURE_STATS], seqs[k][-1])
        np.testing.assert_allclose([rows[k][f"h1_{s}"] for s in SIGNATURE_STATS], seqs[k][1])
        np.testing.assert_allclose([rows[k][f"hlast_{s}"] for s in SIGNATURE_STATS], seqs[k][2])
        np.testing.assert_allclose([rows[k][f"hmean_{s}"] for s in SIGNATURE_STATS], seqs[k][1:3].mean(0))
        margins = mlp_layer_margins(weights, biases, x, y)
        np.testing.assert_allclose([rows[k][f"jiang_out_{s}"] for s in SIGNATURE_STATS],
                                   signature_of(margins[-1], "jiang")[k].numpy())


def test_perturbed_error_by_hand():
    """A linear classifier sign(x_1) on points at x_1 = +-1: under noise of std 1 a point flips with P(N(0,1) > 1)."""
    weights = [torch.tensor([[[1.0, -1.0], [0.0, 0.0]]], dtype=torch.float64)]      # logits (x1, -x1)
    biases = [torch.zeros(1, 1, 2, dtype=torch.float64)]
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]] * 500, dtype=torch.float64)
    y = torch.tensor([0, 1] * 500)
    assert mlp_perturbed_error(weights, biases, x, y, 0.0).item() == 0.0
    err = mlp_perturbed_error(weights, biases, x, y, 1.0, n_draws=40).item()
    assert err == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=0.01)        # 0.1587
    wrong = torch.tensor([1, 1] * 500)
    assert mlp_perturbed_error(weights, biases, x, wrong, 0.0).item() == 0.5       # sigma 0: the training error


def test_nearest_neighbour_statistics_by_hand():
    x = np.array([[0.0, 0], [1, 0], [3, 0], [7, 0]])
    assert median_nn_distance(x) == pytest.approx(1.5)                               # distances 1, 1, 2, 4
    line = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0], [11, 0], [12, 0]])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # k=1: 2 takes 1's label (0) and 12 takes 11's (1); ties (1, 11) go to the lower index, which agrees
    assert knn_loo_error(line, labels, k=1) == pytest.approx(2 / 6)
    # k=2: 0 and 1 tie 0-1 and keep label 0 (right); 2 sees 0, 0 (wrong); 10 and 11 tie and take 0 (wrong);
    # 12 sees 1, 1 (wrong)
    assert knn_loo_error(line, labels, k=2) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="k=6"):
        knn_loo_error(line, labels, k=6)


# ------------------------------------------------------------------------------------------ batched training

def _spec(i, optimizer, lr, batch_size, weight_decay=0.0, dropout=0.0, depth=2, width=8):
    return NetworkSpec(network_id=i, task_index=0, depth=depth, width=width, optimizer=optimizer, lr_level=0, lr=lr,
                       batch_size=batch_size, weight_decay=weight_decay, dropout=dropout)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_batched_training_matches_torch_optim_on_full_batches(optimizer):
    """Full-batch training without dropout: every network of the batch, each on its own task, follows torch.optim."""
    tasks = [SpiralTask(arms=3, n_train=60, n_test=60), SpiralTask(arms=3, turns=0.75, noise=0.2, n_train=45, n_test=60)]
    datasets = [make_spiral_data(tasks[0], 0), make_spiral_data(tasks[1], 1)]
    lr = 0.05 if optimizer == "sgd" else 0.01
    specs = [_spec(0, optimizer, lr, 1000, weight_decay=1e-3), _spec(1, optimizer, lr / 3, 1000)]
    weights, biases, init = _train_group(datasets, specs, 25, seed=3)
    for k, (spec, data) in enumerate(zip(specs, datasets)):
        x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
        net = _sequential([w.double() for w in init], [torch.zeros(2, 1, w.shape[2], dtype=torch.float64)
                                                       for w in init], k).float()
        if optimizer == "sgd":
            opt = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
        else:
            opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        for _ in range(25):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        for lin, w, b in zip(linears, weights, biases):
            torch.testing.assert_close(w[k], lin.weight.detach().T, rtol=2e-4, atol=2e-5)
            torch.testing.assert_close(b[k, 0], lin.bias.detach(), rtol=2e-4, atol=2e-5)


def test_minibatches_are_drawn_from_each_networks_own_task():
    """Two tasks whose labels are each other's mirror: a network can only fit its own if it sees its own data."""
    base = make_spiral_data(SpiralTask(arms=2, n_train=64, n_test=64, noise=0.05), 0)
    mirrored = dataclasses.replace(base, y_train=1 - base.y_train, y_test=1 - base.y_test)
    specs = [_spec(0, "adam", 0.01, 16, depth=2, width=32), _spec(1, "adam", 0.01, 16, depth=2, width=32)]
    weights, biases, _ = _train_group([base, mirrored], specs, 400, seed=0)
    for k, data in enumerate([base, mirrored]):
        _, error = _evaluate([w[k:k + 1] for w in weights], [b[k:k + 1] for b in biases],
                             torch.as_tensor(data.x_train), torch.as_tensor(data.y_train))
        assert error.item() < 0.2
    with pytest.raises(ValueError, match="same depth, width and number of classes"):
        _train_group([base, make_spiral_data(SpiralTask(arms=3), 0)], specs, 1, seed=0)


def test_train_networks_rows_are_measured_and_deterministic():
    datasets = {0: make_spiral_data(SpiralTask(arms=2, n_train=80, n_test=200, noise=0.1), 1),
                1: make_spiral_data(SpiralTask(arms=2, n_train=50, n_test=200, noise=0.2, label_noise=0.1), 2)}
    kw = dict(depths=(1, 2), widths=(8,), n_per_architecture=3, optimizers=("sgd", "adam"), n_lr_levels=3,
              batch_sizes=(16, 32), weight_decays=(0.0, 1e-3), dropouts=(0.0, 0.2), seed=0)
    specs = sample_networks(0, **kw) + sample_networks(1, **kw, first_id=6)
    rows, n_diverged, n_collapsed = train_networks(datasets, specs, steps=40, seed=0)
    again, _, _ = train_networks(datasets, specs, steps=40, seed=0)
    assert rows == again
    assert len(rows) + n_diverged + n_collapsed == 12 and len(rows) >= 8
    assert [r["network_id"] for r in rows] == sorted(r["network_id"] for r in rows)
    for r in rows:
        data = datasets[r["task_index"]]
        assert r["task"]["n_train"] == len(data.y_train)
        assert r["gap"] == pytest.approx(r["test_error"] - r["train_error"])
        assert r["loss_gap"] == pytest.approx(r["test_loss"] - r["train_loss"])
        assert r["features"]["train_error"] == pytest.approx(r["train_error"], abs=1.5 / len(data.y_train))
        assert r["features"]["train_knn_error"] == knn_loo_error(data.x_train, data.y_train, k=5)
        assert np.asarray(r["layer_signatures"]).shape == (r["hparams"]["depth"] + 2, 5)
        assert all(math.isfinite(v) for v in r["features"].values())
    with pytest.raises(ValueError, match=r"no dataset for task\(s\) \[2\]"):
        train_networks(datasets, specs + [dataclasses.replace(specs[0], task_index=2)], steps=1, seed=0)


def test_learning_rate_grid_is_centred_on_the_base_rate():
    assert learning_rate("sgd", 2, 5) == pytest.approx(0.01)
    assert learning_rate("sgd", 4, 5) == pytest.approx(0.1)
    assert learning_rate("adam", 0, 5) == pytest.approx(0.0003)
    assert learning_rate("adam", 4, 5) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="unknown optimizer"):
        learning_rate("rmsprop", 0, 3)


# ------------------------------------------------------------------------------------------ splits

def _meta(n=240, seed=0):
    rng = np.random.default_rng(seed)
    return [{"network_id": i, "family": f"arms{rng.integers(2, 5)}_noise{rng.choice([0.02, 0.1])}",
             "hparams": {"depth": int(rng.integers(1, 5)), "lr_level": int(rng.integers(0, 5)), "width": 16,
                         "optimizer": "sgd", "batch_size": 32, "weight_decay": 0.0, "dropout": 0.0}}
            for i in range(n)]


@pytest.mark.parametrize("kind", SPLITS)
def test_grouped_splits_never_leak_a_group(kind):
    meta = _meta()
    folds, groups = split_folds(kind, meta, n_folds=5, random_state=0)
    attribute = {"random": lambda m: m["network_id"], "task_family": lambda m: m["family"],
                 "architecture": lambda m: m["hparams"]["depth"], "hparam_extremes": lambda m: m["hparams"]["lr_level"]}
    disjoint = {"architecture_task_disjoint": ("architecture", "task_family"),
                "hparam_extremes_task_disjoint": ("hparam_extremes", "task_family")}
    for train, test in folds:
        assert len(train) and len(test) and not set(train) & set(test)
        for part in disjoint.get(kind, (kind,)):                       # task-disjoint: both shifts at once
            assert not {attribute[part](meta[i]) for i in train} & {attribute[part](meta[i]) for i in test}
        assert not set(groups[train]) & set(groups[test])
    if kind in disjoint:                                              # every shifted network is tested once
        shifted, _ = split_folds(disjoint[kind][0], meta)
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == shifted[0][1].tolist()
    tested = np.concatenate([te for _, te in folds])
    if kind in ("random", "task_family"):                             # every row is held out exactly once
        assert sorted(tested.tolist()) == list(range(len(meta)))
    if kind == "architecture":
        (train, test), = folds
        assert max(meta[i]["hparams"]["depth"] for i in train) < min(meta[i]["hparams"]["depth"] for i in test)
    if kind == "hparam_extremes":
        (train, test), = folds
        assert {meta[i]["hparams"]["lr_level"] for i in test} == {0, 4}
        assert {meta[i]["hparams"]["lr_level"] for i in train} == {1, 2, 3}


def test_a_split_with_one_group_or_an_unknown_name_is_an_error():
    meta = [dict(m, hparams=dict(m["hparams"], depth=2)) for m in _meta(40)]
    with pytest.raises(ValueError, match="empty side"):
        split_folds("architecture", meta)
    with pytest.raises(ValueError, match="unknown split"):
        split_folds("by_colour", _meta(40))


# ------------------------------------------------------------------------------------------ metrics

def test_ranking_information_is_one_for_a_perfect_predictor_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    meta = _meta(300)
    hparams = [m["hparams"] for m in meta]
    y = rng.normal(size=300)
    names = ("depth", "lr_level")
    assert conditioned_ranking_information(y, 2 * y + 1, hparams, names)["score"] == pytest.approx(1.0)
    assert conditioned_ranking_information(y, -y, hparams, names)["score"] == pytest.approx(1.0)   # order reversed
    noise = conditioned_ranking_information(y, rng.normal(size=300), hparams, names)
    assert 0 <= noise["score"] < 0.02 and noise["conditioned_on"] in noise["by_set"]
    half = conditioned_ranking_information(y, y + rng.normal(size=300), hparams, names)["score"]
    assert 0.05 < half < 0.9


def test_ranking_information_is_zero_when_the_predictor_only_knows_a_hyperparameter():
    """A predictor that reads off depth ranks networks well overall, but carries nothing once depth is fixed."""
    rng = np.random.default_rng(1)
    meta = _meta(400)
    hparams = [m["hparams"] for m in meta]
    depth = np.array([h["depth"] for h in hparams], dtype=float)
    y = depth + 0.3 * rng.normal(size=400)
    res = conditioned_ranking_information(y, depth, hparams, ("depth", "lr_level"))
    assert res["score"] == pytest.approx(0.0, abs=1e-12) and "depth" in res["conditioned_on"]
    assert res["by_set"]["lr_level"] > 0.3


def test_bootstrap_interval_brackets_the_r2():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    pred = y + 0.5 * rng.normal(size=400)
    low, high = bootstrap_r2(y, pred, n_boot=500)
    assert low < r2_score(y, pred) < high and high - low < 0.2


def test_the_family_bootstrap_resamples_whole_families():
    """Errors shared within a family (a per-family offset) widen the interval only when families are resampled."""
    rng = np.random.default_rng(0)
    families = np.repeat(np.arange(8), 50)
    y = rng.normal(size=400)
    pred = y + rng.normal(size=8)[families] * 0.6 + 0.1 * rng.normal(size=400)
    row_low, row_high = bootstrap_r2(y, pred, n_boot=400)
    fam_low, fam_high = bootstrap_r2(y, pred, groups=families, n_boot=400)
    assert fam_high - fam_low > 2 * (row_high - row_low)
    one = bootstrap_r2(y, pred, groups=np.zeros(400), n_boot=50)             # one family: every resample is the zoo
    assert one[0] == pytest.approx(r2_score(y, pred)) and one[1] == pytest.approx(r2_score(y, pred))


def test_within_family_r2_is_zero_for_the_family_mean_oracle():
    rng = np.random.default_rng(1)
    families = np.repeat(["a", "b", "c"], 40)
    y = np.repeat([0.0, 1.0, 2.0], 40) + 0.1 * rng.normal(size=120)
    oracle = np.repeat([y[:40].mean(), y[40:80].mean(), y[80:].mean()], 40)
    assert within_family_r2(y, oracle, families) == pytest.approx(0.0, abs=1e-12)
    assert within_family_r2(y, y, families) == 1.0
    assert r2_score(y, oracle) > 0.95                                         # pooled R² credits the family means
    assert within_family_r2(y, y + 0.1 * rng.normal(size=120), families) < 0.5


def test_feature_sets_pick_their_columns():
    names = ["in_q1", "hmean_median", "out_q3", "jiang_out_q3", "log_geometric_complexity", "log_weight_norm",
             "log_dist_from_init", "train_error", "train_loss", "perturbed_error_0.1", "smoothed_error_1",
             "train_knn_error", "log_nn_distance", "depth"]
    pick = {fs: [names[i] for i in feature_columns(names, fs)] for fs in FEATURE_SETS}
    assert pick["jiang"] == ["in_q1", "hmean_median", "out_q3"]
    assert pick["jiang_log"] == ["jiang_out_q3"]
    assert pick["jiang_gc_norms"] == pick["jiang"] + ["log_geometric_complexity", "log_weight_norm",
                                                      "log_dist_from_init"]
    assert not {n for n in pick["train_error_proxies"] if "_q" in n or "median" in n or n.startswith("log_")} - \
        {"log_nn_distance"}
    assert pick["all"] == names
    with pytest.raises(ValueError, match="unknown feature set"):
        feature_columns(names, "everything")


# ------------------------------------------------------------------------------------------ predictors

def _synthetic_zoo(n=400, seed=0):
    """Features with a known relation to the target: y = 0.8 a - 0.5 b + 0.3 a b + noise; sequences carry a too."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.05 * rng.normal(size=n)
    lengths = rng.integers(3, 7, n)
    sequences = [np.column_stack([np.full(m, x[i, 0]), rng.normal(size=(m, 4))]) for i, m in enumerate(lengths)]
    return x, sequences, y


@pytest.mark.parametrize("name", ZOO_PREDICTORS)
def test_every_predictor_recovers_a_known_relation(name):
    x, seqs, y = _synthetic_zoo()
    model = ZooPredictor(name, random_state=0, rnn_epochs=60).fit(x[:300], seqs[:300], y[:300])
    pred = model.predict(x[300:], seqs[300:])
    assert r2_score(y[300:], pred) > {"linear": 0.99, "mlp": 0.95, "gbm": 0.9, "rnn": 0.9}[name]
    again = ZooPredictor(name, random_state=0, rnn_epochs=60).fit(x[:300], seqs[:300], y[:300])
    np.testing.assert_allclose(again.predict(x[300:], seqs[300:]), pred)      # deterministic from random_state
    with pytest.raises(ValueError, match="unknown zoo predictor"):
        ZooPredictor("svm")


@pytest.mark.parametrize("name", ZOO_PREDICTORS)
def test_shuffled_targets_give_no_held_out_r2(name):
    """The permutation check: the same features with the targets shuffled give held-out R² <= 0.1."""
    x, seqs, y = _synthetic_zoo()
    shuffled = np.random.default_rng(3).permutation(y)
    model = ZooPredictor(name, random_state=0, rnn_epochs=30).fit(x[:300], seqs[:300], shuffled[:300])
    assert r2_score(shuffled[300:], model.predict(x[300:], seqs[300:])) <= 0.1


def test_the_rnn_reads_the_layer_sequence():
    """The target lives only in the sequences (their last step): the global features are pure noise."""
    rng = np.random.default_rng(2)
    n = 400
    lengths = rng.integers(3, 7, n)
    sequences = [rng.normal(size=(m, 5)) for m in lengths]
    y = np.array([s[-1, 0] - 0.5 * s[-1, 1] for s in sequences])
    x = rng.normal(size=(n, 2))
    model = LayerSequenceRegressor(epochs=80, random_state=0).fit(x[:300], sequences[:300], y[:300])
    assert r2_score(y[300:], model.predict(x[300:], sequences[300:])) > 0.9


# ------------------------------------------------------------------------------------------ steps

def _tiny_cfg(**fit):
    cfg = gap_zoo_config.load_gap_zoo_config_file(TINY)
    return dataclasses.replace(cfg, fit=dataclasses.replace(cfg.fit, **fit)) if fit else cfg


@pytest.fixture(scope="module")
def tiny_rows():
    cfg = _tiny_cfg()
    shards = train_shard.shard_plan(cfg.zoo)
    return fit_predictors.merge_shards([train_shard.run(cfg.zoo, s, seed=0).rows for s in shards])


def test_shard_plan_covers_every_task_once():
    cfg = gap_zoo_config.load_gap_zoo_config({"zoo": {"n_tasks": 7, "tasks_per_shard": 3}})
    plan = train_shard.shard_plan(cfg.zoo)
    assert plan == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="outside"):
        train_shard.run(cfg.zoo, [7], seed=0)


def test_run_shard_is_deterministic_and_ids_are_unique(tiny_rows):
    cfg = _tiny_cfg()
    assert cfg.fit.min_networks <= len(tiny_rows) <= cfg.zoo.n_networks
    first = train_shard.run(cfg.zoo, train_shard.shard_plan(cfg.zoo)[0], seed=0).rows
    assert first == [r for r in tiny_rows if r["task_index"] in train_shard.shard_plan(cfg.zoo)[0]]
    assert len({r["network_id"] for r in tiny_rows}) == len(tiny_rows)
    assert len({r["family"] for r in tiny_rows}) >= 2
    with pytest.raises(ValueError, match="same network id"):
        fit_predictors.merge_shards([first, first])


def _assert_plain(value, where="artifact"):
    """Numbers, strings, bytes, None, lists/tuples/dicts of them and numpy arrays: nothing of this repository."""
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_plain(k, where)
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (bool, int, float, str, bytes, np.ndarray, np.generic)), \
            f"{where} is a {type(value)}"


def test_fit_scores_every_predictor_on_every_split_and_ablates(tiny_rows):
    cfg = _tiny_cfg()
    result = fit_predictors.run(cfg.fit, tiny_rows, seed=0)
    assert {(r["split"], r["predictor"]) for r in result.r2_table} == {(s, p) for s in SPLITS for p in ZOO_PREDICTORS}
    for r in result.r2_table:
        assert math.isfinite(r["r2"]) and r["r2_low"] <= r["r2_high"]
        assert -1 <= r["kendall_tau"] <= 1 or math.isnan(r["kendall_tau"])   # NaN: a constant prediction
        assert r["within_family_r2"] <= 1 and 0 <= r["ranking_information"] <= 1 + 1e-9
    assert {(r["split"], r["feature_set"], r["predictor"]) for r in result.ablation} == \
        {(s, fs, "linear") for s in cfg.fit.ablation_splits for fs in FEATURE_SETS}
    main = {(r["split"], r["predictor"]): r["r2"] for r in result.r2_table}
    for r in result.ablation:                       # the "all" set is the main table's fit
        if r["feature_set"] == "all":
            assert r["r2"] == main[(r["split"], r["predictor"])]
    assert [r["predictor"] for r in result.permutation_check] == ["linear"]
    assert set(fit_predictors.out_of_distribution_summary(result.r2_table)) == set(OUT_OF_DISTRIBUTION_SPLITS)
    fitted = load_predictors(result.predictors)
    x, names, seqs = fit_predictors.zoo_inputs(tiny_rows, result.feature_names)
    assert set(fitted) == set(ZOO_PREDICTORS) and names == result.feature_names
    for model in fitted.values():
        assert np.isfinite(model.predict(x, seqs)).all()
    for field in dataclasses.fields(result):
        _assert_plain(getattr(result, field.name), field.name)
    _assert_plain(tiny_rows, "rows")


def test_predictors_pickled_before_the_split_still_load(tiny_rows):
    """Old runs pickled ZooPredictor under libs.gap_predictors; load_predictors maps it to libs.spiral_predictors."""
    model = ZooPredictor("linear", 0).fit(*fit_predictors.zoo_inputs(tiny_rows)[::2],
                                           np.array([r["gap"] for r in tiny_rows]))
    # protocol 2 names classes as "module\nname\n" text, so the module can be renamed in the bytes
    blob = pickle.dumps({"linear": model}, protocol=2).replace(b"libs.spiral_predictors\n", b"libs.gap_predictors\n")
    with pytest.raises((AttributeError, ModuleNotFoundError)):
        pickle.loads(blob)
    assert isinstance(load_predictors(blob)["linear"], ZooPredictor)


def test_fit_in_parallel_gives_the_same_table(tiny_rows):
    few = dict(splits=("random", "architecture"), predictors=("linear", "rnn"), ablation_sets=("jiang",),
               ablation_splits=("random",))
    serial = fit_predictors.run(_tiny_cfg(**few).fit, tiny_rows, seed=1)
    parallel = fit_predictors.run(_tiny_cfg(**few, n_jobs=2).fit, tiny_rows, seed=1)
    assert serial.r2_table == parallel.r2_table and serial.ablation == parallel.ablation


def test_fit_rejects_a_zoo_too_small_and_nan_features(tiny_rows):
    cfg = _tiny_cfg()
    with pytest.raises(ValueError, match="fewer than fit.min_networks"):
        fit_predictors.run(cfg.fit, tiny_rows[:cfg.fit.min_networks - 1], seed=0)
    broken = [dict(r) for r in tiny_rows]
    broken[3] = dict(broken[3], features=dict(broken[3]["features"], log_weight_norm=float("nan")))
    with pytest.raises(ValueError, match="log_weight_norm.*must be finite"):
        fit_predictors.run(cfg.fit, broken, seed=0)
    broken = [dict(r) for r in tiny_rows]
    broken[0] = dict(broken[0], gap=float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        fit_predictors.run(cfg.fit, broken, seed=0)


def test_config_errors_name_the_key():
    with pytest.raises(gap_zoo_config.ConfigError, match="fit.splits"):
        gap_zoo_config.load_gap_zoo_config({"fit": {"splits": ["random", "by_colour"]}}, source="x.toml")
    with pytest.raises(gap_zoo_config.ConfigError, match="zoo.widths is empty"):
        gap_zoo_config.load_gap_zoo_config({"zoo": {"widths": []}}, source="x.toml")
    with pytest.raises(gap_zoo_config.ConfigError, match="unknown key 'zoo.depht'"):
        gap_zoo_config.load_gap_zoo_config({"zoo": {"depht": [1]}}, source="x.toml")
    with pytest.raises(gap_zoo_config.ConfigError, match="fit.ablation_sets"):
        gap_zoo_config.load_gap_zoo_config({"fit": {"ablation_sets": ["margins"]}}, source="x.toml")


def test_report_items_render_without_metaflow(tiny_rows):
    from libs.report import Figure, Markdown, Table
    from libs.schema import to_dict

    cfg = _tiny_cfg(splits=("random", "task_family"), predictors=("linear", "gbm"))
    result = fit_predictors.run(cfg.fit, tiny_rows, seed=0)
    items = fit_predictors.report(result)
    assert isinstance(items[0], Markdown) and sum(isinstance(i, Table) for i in items) == 3   # table, ablation, check
    assert sum(isinstance(i, Figure) for i in items) == 3                     # 2 scatters + importances
    assert "does not say which" in items[0].text and "goal" not in items[0].text.replace("no goal", "")
    summary = fit_predictors.summary(result.r2_table, result.ablation, n_networks=len(tiny_rows),
                                     n_trained=len(tiny_rows), n_diverged=0, n_collapsed=0, train_seconds=1.0,
                                     fit_seconds=1.0)
    assert "R^2=0.584" in summary[0].text and "task_family" in str(summary[1].rows)
    start = gap_zoo_config.describe_run(to_dict(cfg), train_shard.shard_plan(cfg.zoo))
    assert "32 networks" in start[0].text and ["zoo.n_tasks", "4"] in start[1].rows


# ------------------------------------------------------------------------------------------ the flow

def _env(root: Path) -> dict:
    return {"USER": "test", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_gap_zoo_flow_end_to_end(tmp_path):
    from metaflow import Runner

    # runs start in their datastore folder so that the Client finds the local cards (see tests/test_growth_flow.py)
    with Runner(FLOW, show_output=False, env=_env(tmp_path), cwd=str(tmp_path),
                config=[("config", TINY)]).run(max_workers=2) as running:
        assert running.status == "successful", running.stderr[-5000:]
        run_id = running.run.id
    from metaflow import Run, metadata, namespace
    from metaflow.cards import get_cards

    metadata(f"local@{tmp_path}")
    namespace(None)
    run = Run(f"GapZooFlow/{run_id}")
    assert {s.id for s in run} == {"start", "train_shard", "fit_predictors", "end"}
    cfg = _tiny_cfg()
    assert len(list(run["train_shard"])) == len(train_shard.shard_plan(cfg.zoo))
    for s in run:
        for task in s:
            cards = get_cards(task)
            assert len(cards) >= 1 and len(cards[0].get()) > 1000, f"{s.id} has no card"
    d = run["fit_predictors"].task.data
    assert d.n_networks == len(d.zoo_rows) == d.n_trained - d.n_diverged
    assert {(r["split"], r["predictor"]) for r in d.r2_table} == {(s, p) for s in SPLITS for p in ZOO_PREDICTORS}
    assert set(d.best) == set(SPLITS) and set(load_predictors(d.predictors)) == set(ZOO_PREDICTORS)
    assert "log_geometric_complexity" in d.feature_names and d.ablation and d.permutation_check
    assert set(d.out_of_distribution) == set(OUT_OF_DISTRIBUTION_SPLITS)
    assert d.settings["zoo"]["n_tasks"] == cfg.zoo.n_tasks
    for s in run:                                  # every artifact is plain data, none a class of this repository
        for task in s:
            for artifact in task:
                if not artifact.id.startswith("_") and artifact.id != "name":
                    _assert_plain(artifact.data, f"{s.id}.{artifact.id}")


@pytest.mark.slow
def test_gap_zoo_flow_rejects_a_bad_config_before_any_step(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text("[zoo]\nn_tasks = 0\n")
    out = subprocess.run([sys.executable, FLOW, "--config", "config", str(bad), "run"], cwd=str(tmp_path),
                         env={**os.environ, **_env(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"Invalid configuration: {bad}: key 'zoo.n_tasks' has value 0" in out.stdout + out.stderr
    assert not (tmp_path / ".metaflow" / "GapZooFlow").exists()              # no run, no step started


@pytest.mark.slow
def test_project_code_travels_with_the_flow(tmp_path):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, FLOW, "package", "list"], cwd=str(tmp_path),
                         env={**os.environ, **_env(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    listed = out.stdout + out.stderr
    for path in ("libs/spiral.py", "libs/mlp_zoo.py", "libs/spiral_features.py", "libs/spiral_predictors.py",
                 "steps/train_shard.py", "steps/fit_predictors.py", "steps/gap_zoo_config.py",
                 "config/gap_zoo/default.toml", "config/gap_zoo/tiny.toml"):
        assert path in listed, f"`package list` lacks {path}"
