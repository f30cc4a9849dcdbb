import numpy as np
import pytest
import torch

from libs.gap_features import (GapProbe, checkpoint_row, geometric_complexity, lm_covariates, lm_features,
                               margin_signature, measure_gap, measurement_fingerprint, output_margins,
                               shared_train_eval_rows, unique_tokens, weight_norm_features)
from libs.gap_predictors import feature_matrix, kendall_tau, leave_one_group_out, make_predictor, r2_score
from libs.models import ModelSpec, build_model
from libs.training import per_example_loss
from steps.predict_gap import GapConfig, run as predict_gap

V, L = 30, 10


def _model(seed=0, width=16):
    return build_model(ModelSpec(n_layer=1, n_embd=width, n_head=2), vocab_size=V, n_positions=L, seed=seed).eval()


def _data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (n, L)).astype(np.int32), rng.integers(4, L + 1, n).astype(np.int32)


def test_output_margin_equals_autograd_distance_to_the_decision_boundary():
    """margin / ||w_y - w_j|| is the distance of h to the boundary z_y = z_j; check against autograd."""
    model = _model()
    tokens, lengths = _data(1)
    margins, scale, _ = output_margins(model, tokens, lengths)
    x = torch.as_tensor(tokens[:, :lengths[0] - 1], dtype=torch.long)
    hidden = model(input_ids=x, output_hidden_states=True).hidden_states[-1][0].detach().requires_grad_(True)
    logits = model.lm_head(hidden)
    y = torch.as_tensor(tokens[0, 1:lengths[0]], dtype=torch.long)
    for t in range(len(y)):
        z = logits[t]
        j = int(torch.cat([z[:y[t]], torch.tensor([-1e9]), z[y[t] + 1:]]).argmax())
        diff = z[y[t]] - z[j]
        (grad,) = torch.autograd.grad(diff, hidden, retain_graph=True)
        expected = float(diff.detach() / grad[t].norm()) / scale     # first-order distance, exact for a linear head
        assert margins[t] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_geometric_complexity_of_a_linear_map_is_its_squared_frobenius_norm():
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, 8)
            self.A = torch.nn.Linear(8, 5, bias=False)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, inputs_embeds):
            return type("Out", (), {"logits": self.A(inputs_embeds)})()

    m = Linear()
    tokens = np.zeros((4, L), dtype=np.int32)
    lengths = np.array([L, 6, 3, L], dtype=np.int32)
    expected = float(m.A.weight.pow(2).sum())
    assert geometric_complexity(m, tokens, lengths, n_probes=0) == pytest.approx(expected, rel=1e-5)
    assert geometric_complexity(m, tokens, lengths, n_probes=400, seed=0) == pytest.approx(expected, rel=0.15)


def test_geometric_complexity_of_padded_rows_equals_the_unpadded_per_row_values():
    """The padding bug: padded positions entered the numerator but not the denominator."""
    model = _model(width=16)
    tokens, _ = _data(4, seed=3)
    lengths = np.array([L, 6, 4, 8], dtype=np.int32)                   # 62% of the positions valid... and padded
    padded = geometric_complexity(model, tokens, lengths, n_probes=0)
    per_row = [geometric_complexity(model, tokens[i:i + 1, :n], np.array([n]), n_probes=0)
               for i, n in enumerate(lengths)]
    weights = lengths - 1                                              # positions per row
    assert padded == pytest.approx(float(np.dot(per_row, weights) / weights.sum()), rel=1e-6)
    # the old formula (every position in the numerator, valid ones in the denominator) is far from it
    everything = geometric_complexity(model, tokens, np.full(4, L, np.int32), n_probes=0)
    old = everything * (4 * (L - 1)) / weights.sum()
    assert abs(old / padded - 1) > 0.2
    # the Hutchinson estimate with padding is unbiased for the same value
    assert geometric_complexity(model, tokens, lengths, n_probes=300, seed=1) == pytest.approx(padded, rel=0.2)


def test_margin_signature_values():
    sig = margin_signature(np.arange(1, 101, dtype=float), "m")
    q1, q3 = 25.75, 75.25
    assert sig["m_q1"] == pytest.approx(np.log1p(q1))
    assert sig["m_upper_fence"] == pytest.approx(np.log1p(q3 + 1.5 * (q3 - q1)))
    assert sig["m_lower_fence"] == pytest.approx(-np.log1p(-(q1 - 1.5 * (q3 - q1))))
    with pytest.raises(ValueError, match="not finite"):
        margin_signature(np.array([1.0, np.nan]), "m")


def test_weight_norms_are_per_parameter_and_distance_is_from_the_reference():
    model = _model()
    init = {k: v.detach().clone() for k, v in model.named_parameters()}
    f0 = weight_norm_features(model, init)
    assert f0["log_rms_dist_from_init"] < -20                          # at its own init: distance 0 (clamped)
    mats = [p.detach().double() for p in model.parameters() if p.ndim >= 2]
    rms = np.sqrt(sum(float(m.pow(2).sum()) for m in mats) / sum(m.numel() for m in mats))
    assert f0["log_rms_weight"] == pytest.approx(np.log(rms))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.5)
    f1 = weight_norm_features(model, init)
    n = sum(m.numel() for m in mats)
    assert f1["log_rms_dist_from_init"] == pytest.approx(0.5 * np.log(0.25 * model.transformer.h[0].mlp.c_fc.weight.numel() / n))
    # a model twice as wide at the same init scale has about the same per-parameter norm (scale-free)
    wide = _model(width=32)
    assert abs(weight_norm_features(wide, None)["log_rms_weight"] - f0["log_rms_weight"]) < 0.3
    with pytest.raises(ValueError, match="shares no weight matrix"):
        weight_norm_features(model, {"other": torch.zeros(2, 2)})


def test_covariates_and_lm_features():
    cov = lm_covariates(n_params=1000, tokens_seen=300, unique_train_tokens=100, lr=1e-3)
    assert cov["epochs"] == 3.0 and cov["log_params_per_token"] == pytest.approx(np.log(10))
    with pytest.raises(ValueError, match="must be > 0"):
        lm_covariates(n_params=0, tokens_seen=1, unique_train_tokens=1, lr=1e-3)
    model = _model()
    tokens, lengths = _data()
    f = lm_features(model, tokens, lengths, init_state={k: v.clone() for k, v in model.named_parameters()})
    assert all(np.isfinite(v) for v in f.values())
    with pytest.raises(ValueError, match="at least one"):
        lm_features(model, tokens[:0], lengths[:0])


def test_measure_gap_uses_every_validation_row_and_the_fixed_training_subset():
    model = _model()
    train, train_len = _data(12, seed=1)
    val, val_len = _data(9, seed=2)
    rows = shared_train_eval_rows(np.array([3, 3, 5, 7, 9, 11]), 4, seed=0)
    assert len(rows) == 4 and set(rows) <= {3, 5, 7, 9, 11}
    assert np.array_equal(rows, shared_train_eval_rows(np.array([11, 9, 7, 5, 3]), 4, seed=0))
    probe = GapProbe(train[rows], train_len[rows], val, val_len, unique_train_tokens=unique_tokens(train_len, rows),
                     n_feature_rows=3)
    m = measure_gap(model, probe)
    per_val = per_example_loss(model, val, val_len)
    assert m["val_loss"] == pytest.approx(float((per_val * (val_len - 1)).sum() / (val_len - 1).sum()))
    assert m["gap"] == pytest.approx(m["val_loss"] - m["train_loss"])
    row = checkpoint_row(model, probe, model_name="m", step=5, tokens_seen=200, lr=1e-3, init_state=None,
                         key="cfg:0:m")
    assert row["key"] == "cfg:0:m" and row["gap"] == pytest.approx(m["gap"])
    assert row["features"]["epochs"] == pytest.approx(200 / probe.unique_train_tokens)
    assert measurement_fingerprint(256, 64) != measurement_fingerprint(16, 8)


def test_predictors_recover_a_known_relation_and_groups_never_leak():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = 2 * x[:, 0] - x[:, 1] + 0.05 * rng.normal(size=120)
    groups = np.repeat(np.arange(12), 10)
    for name in ("linear", "gbm", "mlp"):
        pred = leave_one_group_out(name, x, y, groups)
        assert r2_score(y, pred) > 0.8, name
        assert kendall_tau(y, pred) > 0.6
    # a group's rows are never in the fit that predicts them: a pure group-offset target is unpredictable
    y_groups = rng.normal(size=12)[groups]
    pred = leave_one_group_out("linear", rng.normal(size=(120, 3)), y_groups, groups)
    assert r2_score(y_groups, pred) < 0.2


def test_feature_and_zoo_errors():
    with pytest.raises(ValueError, match="'b' of row 1 is nan"):
        feature_matrix([{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": float("nan")}])
    with pytest.raises(ValueError, match="lacks"):
        feature_matrix([{"a": 1.0, "b": 2.0}, {"a": 1.0}])
    with pytest.raises(ValueError, match="fewer than predict_gap.min_zoo_rows"):
        predict_gap(GapConfig(), zoo_rows=[{"features": {"a": 1.0}, "gap": 0.1, "model": "m"}], targets={}, seed=0)
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("rnn")
