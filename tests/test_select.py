"""The select step on a tiny synthetic token set (three 'sources' with different token statistics)."""
import dataclasses

import numpy as np
import pytest

from libs.models import ModelSpec, model_from_files
from libs.report import Figure, Markdown, Table
from libs.token_data import TokenData
from libs.training import TrainConfig
from steps import select_data

SEQ_LEN, VOCAB = 16, 48


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    n_per, sources = 40, ["alpha", "beta", "gamma"]
    tokens, lengths, names, emb = [], [], [], []
    directions = rng.normal(size=(3, 12))
    for s, name in enumerate(sources):
        for _ in range(n_per):
            length = int(rng.integers(6, SEQ_LEN + 2))
            row = np.zeros(SEQ_LEN + 1, dtype=np.int32)
            # each source draws its tokens from its own third of the vocabulary
            row[:length] = rng.integers(s * 16, s * 16 + 16 if s < 2 else VOCAB, length)
            tokens.append(row)
            lengths.append(length)
            names.append(name)
            emb.append(directions[s] + 0.3 * rng.normal(size=12))
    val = np.stack(tokens[::10])
    data = TokenData(train_tokens=np.stack(tokens), train_lengths=np.asarray(lengths, dtype=np.int32), val_tokens=val,
                     val_lengths=np.asarray(lengths[::10], dtype=np.int32), train_sources=np.asarray(names),
                     vocab_size=VOCAB, seq_len=SEQ_LEN, bos_id=0, eos_id=1)
    return dict(embeddings=np.asarray(emb, dtype=np.float32), data=data, seed=0, progress=False)


CFG = select_data.SelectConfig(budget_docs=30, n_clusters=4, diagnostic_seeds=4, kmeans_n_init=1,
                          reference_model=ModelSpec(n_layer=1, n_embd=16, n_head=2, n_inner=32),
                          reference_train=TrainConfig(steps=3, batch_size=8, warmup_steps=1, eval_every=3,
                                                      eval_batches=1))


@pytest.fixture(scope="module")
def selected(inputs):
    return select_data.run(CFG, **inputs)


def test_sensitivity_selection_contract(inputs, selected):
    s, n = selected, 120
    assert s.indices.dtype == np.int64 and np.all(np.diff(s.indices) > 0)        # distinct, sorted
    assert s.budget_docs == 30 and s.n_draws == 26 and len(s.indices) <= 30
    assert set(s.center_indices) <= set(s.indices)                                 # the centers are selected
    assert s.weights.mean() == pytest.approx(1.0) and (s.weights > 0).all()
    np.testing.assert_allclose(s.weights, s.raw_weights / s.raw_weights.mean())
    assert s.probabilities.shape == (n,) and s.probabilities.sum() == pytest.approx(1.0)
    assert s.probabilities[s.center_indices].sum() == 0
    assert s.assignment.shape == (n,) and s.centers.shape == (4, 12) and s.cluster_sizes.sum() == n
    assert s.n_loss_queries == 4 + 8 and s.diagnostics["n_probe_queries"] == 8   # centers + 2 probes each
    assert np.isfinite(s.lambda_) and s.lambda_ >= 0
    d = s.diagnostics
    # Σ raw weight x loss over the subset is the reported estimate of the total loss
    assert (s.raw_weights @ s.losses[s.indices]) / n == pytest.approx(d["estimated_mean_loss"])
    assert d["true_mean_loss"] == pytest.approx(s.losses.mean())
    assert {"relative_std", "uniform_relative_std_equal_docs", "uniform_relative_std_equal_queries",
            "stratified_relative_std_equal_docs", "std_ratio_equal_docs", "std_ratio_equal_queries",
            "holder_ratio_percentiles", "proxy_correlation"} <= d.keys()
    # equal cost: uniform at equal loss queries gets the probes' queries as extra rows
    assert d["uniform_rows_at_equal_queries"] == 30 + 8
    losses = s.losses
    assert d["uniform_relative_std_equal_docs"] == pytest.approx(
        np.sqrt(n * n * (1 - 30 / n) * losses.var(ddof=1) / 30) / losses.sum())
    assert d["uniform_relative_std_equal_queries"] == pytest.approx(
        np.sqrt(n * n * (1 - 38 / n) * losses.var(ddof=1) / 38) / losses.sum())
    assert d["std_ratio_equal_queries"] == pytest.approx(d["relative_std"] / d["uniform_relative_std_equal_queries"])
    assert s.embeddings.shape == (0, 0) and s.levels.shape == (4,) and d["mixture"] == CFG.mixture
    model = model_from_files(s.reference_model_files)
    assert model.config.vocab_size == VOCAB and s.reference_seconds > 0
    assert sum(row[3] for row in s.source_table) == len(s.indices)
    assert sum(row[5] for row in s.source_table) == pytest.approx(1.0, abs=1e-3)


def test_same_seed_same_selection_and_shards_change_nothing(inputs, selected):
    again = select_data.run(CFG, **inputs)
    np.testing.assert_array_equal(again.indices, selected.indices)
    np.testing.assert_array_equal(again.weights, selected.weights)
    sharded = select_data.run(dataclasses.replace(CFG, n_shards=3), **inputs)
    np.testing.assert_array_equal(sharded.indices, selected.indices)
    np.testing.assert_allclose(sharded.raw_weights, selected.raw_weights, rtol=1e-10)
    other = select_data.run(CFG, **{**inputs, "seed": 1})
    assert not np.array_equal(other.indices, selected.indices)


@pytest.mark.parametrize("method", ["sensitivity_distance", "uniform", "stratified", "kcenter"])
def test_every_method_shares_the_api_and_the_card(inputs, method):
    s = select_data.run(dataclasses.replace(CFG, method=method), **inputs)
    assert len(s.indices) > 0 and np.isfinite(s.weights).all() and s.weights.mean() == pytest.approx(1.0)
    assert s.probabilities.sum() == pytest.approx(1.0)
    assert s.n_loss_queries == 0                                # only sensitivity needs the model to select
    assert np.isfinite(s.diagnostics["relative_std"]) and np.isfinite(s.diagnostics["std_ratio_equal_docs"])
    items = select_data.report(s)
    assert any(isinstance(i, Figure) for i in items) and any(isinstance(i, Table) for i in items)


def test_report_shows_the_estimate_check_and_composition(selected):
    items = select_data.report(selected)
    text = "\n".join(i.text for i in items if isinstance(i, Markdown))
    assert "Estimate check" in text and "Hölder ratios" in text and "loss queries" in text
    titles = [i.title for i in items if isinstance(i, Table)]
    assert any("Composition by source" in t for t in titles) and any("Clusters" in t for t in titles)
    import matplotlib.pyplot as plt
    for item in items:
        if isinstance(item, Figure):
            plt.close(item.figure)


def test_reference_model_from_a_local_folder(inputs, selected, tmp_path):
    model_from_files(selected.reference_model_files).save_pretrained(tmp_path)
    s = select_data.run(dataclasses.replace(CFG, reference_model_path=str(tmp_path)), **inputs)
    np.testing.assert_allclose(s.losses, selected.losses, rtol=1e-5)
    assert s.diagnostics["reference"]["train_tokens"] == 0
    with pytest.raises(ValueError, match="is not a folder"):
        select_data.run(dataclasses.replace(CFG, reference_model_path=str(tmp_path / "missing")), **inputs)
    with pytest.raises(ValueError, match="vocab_size 48 but the tokenizer has 100"):
        select_data.run(dataclasses.replace(CFG, reference_model_path=str(tmp_path)),
                        **{**inputs, "data": dataclasses.replace(inputs["data"], vocab_size=100)})


def test_without_diagnostics_the_model_answers_the_queries(inputs, selected):
    s = select_data.run(dataclasses.replace(CFG, diagnostics=False), **inputs)
    assert len(s.losses) == 0 and "true_mean_loss" not in s.diagnostics
    np.testing.assert_array_equal(s.center_indices, selected.center_indices)
    assert s.n_loss_queries == selected.n_loss_queries
    assert len(select_data.report(s)) >= 4
    baseline = select_data.run(dataclasses.replace(CFG, method="uniform", diagnostics=False), **inputs)
    assert baseline.reference_model_files == {} and baseline.reference_seconds == 0


def test_clear_errors(inputs):
    with pytest.raises(ValueError, match="budget_docs=121 is larger than the 120 training documents"):
        select_data.run(dataclasses.replace(CFG, budget_docs=121), **inputs)
    with pytest.raises(ValueError, match="embeddings has 3 rows but there are 120 training documents"):
        select_data.run(CFG, **{**inputs, "embeddings": inputs["embeddings"][:3]})
    with pytest.raises(TypeError, match="data must be a libs.token_data.TokenData"):
        select_data.run(CFG, **{**inputs, "data": {"train_tokens": inputs["data"].train_tokens}})
    bad = inputs["embeddings"].copy()
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite values in 1 rows \\(first: row 5\\)"):
        select_data.run(CFG, **{**inputs, "embeddings": bad})
    with pytest.raises(ValueError, match="n_clusters=130 is larger than the 120 training documents"):
        select_data.run(dataclasses.replace(CFG, n_clusters=130, budget_docs=0, budget=1.0), **inputs)
    with pytest.raises(ValueError, match="n_clusters=30 leaves none of the budget of 30 documents"):
        select_data.run(dataclasses.replace(CFG, n_clusters=30), **inputs)
    dup = np.repeat(inputs["embeddings"][:2], 60, axis=0)
    with pytest.raises(ValueError, match="clusters empty"):
        select_data.run(CFG, **{**inputs, "embeddings": dup})


def test_uniform_baseline_draws_distinct_rows(inputs):
    """The select step's uniform baseline is a simple random subset: every budgeted row distinct, equal weights."""
    for seed in range(5):
        s = select_data.run(dataclasses.replace(CFG, method="uniform", budget_docs=90, diagnostics=False),
                            **{**inputs, "seed": seed})
        assert len(s.indices) == 90 and s.n_draws == 90                 # 75% of the rows, none repeated
        np.testing.assert_allclose(s.raw_weights, 120 / 90)


def test_reference_hidden_state_embeddings(inputs, selected):
    """No embeddings passed (embed.method = 'reference'): the step clusters the reference model's hidden states."""
    from steps import embed

    e = embed.run(embed.EmbedConfig(method="reference"), ["a b c"] * 120, seed=0, progress=False)
    assert e.embeddings.shape == (0, 0) and "select_data" in e.embedder_name
    assert any("select_data step embeds" in i.text for i in embed.report(e) if isinstance(i, Markdown))
    s = select_data.run(CFG, **{**inputs, "embeddings": e.embeddings})
    assert s.embeddings.shape == (120, CFG.reference_model.n_embd) and s.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(s.embeddings, axis=1), 1.0, atol=1e-5)
    assert s.embedder_name.startswith("reference-hidden-states") and s.centers.shape[1] == CFG.reference_model.n_embd
    np.testing.assert_allclose(s.losses, selected.losses, rtol=1e-6)       # the same reference model
    again = select_data.run(CFG, **{**inputs, "embeddings": None})
    np.testing.assert_array_equal(again.embeddings, s.embeddings)
    np.testing.assert_array_equal(again.indices, s.indices)


def test_whole_corpus_budget_has_no_uniform_ratio(inputs):
    """budget = every document (the default config's 1.0): uniform without replacement is exact, the ratio NaN."""
    s = select_data.run(dataclasses.replace(CFG, budget_docs=120), **inputs)
    d = s.diagnostics
    assert d["uniform_relative_std_equal_docs"] == 0 and np.isnan(d["std_ratio_equal_docs"])
    assert d["relative_std"] > 0                               # draws with replacement still vary
    text = "\n".join(i.text for i in select_data.report(s) if isinstance(i, Markdown))
    assert "takes every document and is exact" in text
