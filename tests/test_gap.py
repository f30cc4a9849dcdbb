import numpy as np
import pytest
import torch

from libs.gap_features import geometric_complexity, lm_features, margin_signature, output_margins
from libs.gap_predictors import feature_matrix, kendall_tau, leave_one_group_out, make_predictor, r2_score
from libs.models import ModelSpec, build_model
from steps.predict_gap import GapConfig, run as predict_gap

V, L = 30, 10


def _model(seed=0):
    return build_model(ModelSpec(n_layer=1, n_embd=16, n_head=2), vocab_size=V, n_positions=L, seed=seed).eval()


def _data(n=6):
    rng = np.random.default_rng(0)
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
    lengths = np.full(4, L, dtype=np.int32)
    gc = geometric_complexity(m, tokens, lengths, n_probes=4000, seed=0)
    assert gc == pytest.approx(float(m.A.weight.pow(2).sum()), rel=0.05)   # Hutchinson: unbiased, 4000 probes


def test_margin_signature_values():
    sig = margin_signature(np.arange(1, 101, dtype=float), "m")
    q1, q3 = 25.75, 75.25
    assert sig["m_q1"] == pytest.approx(np.log1p(q1))
    assert sig["m_upper_fence"] == pytest.approx(np.log1p(q3 + 1.5 * (q3 - q1)))
    assert sig["m_lower_fence"] == pytest.approx(-np.log1p(-(q1 - 1.5 * (q3 - q1))))
    with pytest.raises(ValueError, match="not finite"):
        margin_signature(np.array([1.0, np.nan]), "m")


def test_lm_features_are_finite_and_distance_from_init_grows():
    model = _model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    tokens, lengths = _data()
    f0 = lm_features(model, tokens, lengths, init_state=init)
    assert all(np.isfinite(v) for v in f0.values())
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.5)
    f1 = lm_features(model, tokens, lengths, init_state=init)
    assert f1["log_dist_from_init"] > f0["log_dist_from_init"]


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


def test_predict_gap_step_on_a_synthetic_zoo():
    rng = np.random.default_rng(1)
    rows = []
    for m in range(6):
        for step in range(5):
            f = {"a": float(rng.normal()), "b": float(rng.normal())}
            rows.append({"features": f, "gap": 0.5 * f["a"] + 0.1, "model": f"m{m}"})
    targets = {"grown": {"features": {"a": 1.0, "b": 0.0}, "gap": 0.6}}
    result = predict_gap(GapConfig(), zoo_rows=rows, targets=targets, seed=0)
    assert result.n_zoo_models == 6
    assert max(r["loo_model_r2"] for r in result.r2_table) > 0.9
    assert result.predictions["grown"]["abs_error"] < 0.1
