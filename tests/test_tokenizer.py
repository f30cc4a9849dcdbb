import numpy as np
import pytest

from libs.tokenizer import encode_documents, special_ids, to_transformers, train_tokenizer

TEXTS = [f"The quick brown fox {i} jumps over the lazy dog.\ndef f(x):\n    return x + {i}" for i in range(200)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def test_round_trip_and_specials(tok):
    hf = to_transformers(tok)
    text = "The lazy fox returns x + 7.\n"
    assert hf.decode(hf.encode(text)) == text
    ids = special_ids(tok)
    assert len({ids["bos"], ids["eos"], ids["pad"]}) == 3
    assert hf.vocab_size == 300


def test_encoding_contract(tok):
    tokens, lengths = encode_documents(tok, ["short", TEXTS[0] * 5], seq_len=16)
    ids = special_ids(tok)
    assert tokens.dtype == np.int32 and tokens.shape == (2, 17) and lengths.dtype == np.int32
    assert tokens[0, 0] == ids["bos"] and tokens[0, lengths[0] - 1] == ids["eos"]
    assert (tokens[0, lengths[0]:] == ids["pad"]).all()
    assert lengths[1] == 17 and ids["eos"] not in tokens[1]          # truncated rows carry no eos
    assert tokens.max() < 300


def test_deterministic_and_errors():
    assert train_tokenizer(TEXTS, 300) == train_tokenizer(TEXTS, 300)
    with pytest.raises(ValueError, match="at least 259"):
        train_tokenizer(TEXTS, 100)
    with pytest.raises(ValueError, match="training split is empty"):
        train_tokenizer([], 300)
