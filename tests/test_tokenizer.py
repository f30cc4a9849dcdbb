"""libs.tokenizer: byte-level BPE training, the token-array contract, the transformers wrapper."""
import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libs.corpus import chunk_text, read_source
from libs.tokenizer import (BOS, EOS, PAD, encode_documents, load_tokenizer, special_ids, to_transformers,
                            train_tokenizer)

ROOT = Path(__file__).resolve().parent.parent
ASCII_SAMPLES = [
    "ROMEO. But soft, what light through yonder window breaks?\n",
    "1 In the beginning God created the heaven and the earth.",
    "    def f(x):\n\treturn {'a': x ** 2}  # comment\n\n",
    "  leading and trailing spaces  ",
    "",
    "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
]


@pytest.fixture(scope="module")
def texts():
    """Real text of the three built-in domains (a few hundred documents)."""
    out = []
    for name in ("shakespeare", "kjv", "stdlib"):
        for text in itertools.islice(read_source(name), 2 if name == "shakespeare" else 40):
            out.extend(chunk_text(text, 400, 32)[:150])
    return out


@pytest.fixture(scope="module")
def tok(texts):
    return train_tokenizer(texts, 600)


def test_specials_and_vocab_size(tok):
    ids = special_ids(tok)
    assert ids == {"bos": 0, "eos": 1, "pad": 2}
    assert load_tokenizer(tok).get_vocab_size() == 600
    tiny = train_tokenizer(["a tiny corpus", "cannot fill a big vocabulary"], 5000)
    assert 259 <= load_tokenizer(tiny).get_vocab_size() < 5000          # a small corpus stops short: read the size


@pytest.mark.parametrize("text", ASCII_SAMPLES)
def test_round_trip_ascii(tok, text):
    raw = load_tokenizer(tok)
    ids = raw.encode(text, add_special_tokens=False).ids
    assert raw.decode(ids) == text
    hf = to_transformers(tok)
    encoded = hf.encode(text)
    assert encoded[0] == hf.bos_token_id == special_ids(tok)["bos"]      # prompts start like training rows
    assert hf.decode(encoded, skip_special_tokens=True) == text
    assert hf.decode(encoded[1:]) == text


def test_byte_level_round_trips_any_unicode(tok):
    text = "naïve café — “quotes” 日本語 🙂"
    assert load_tokenizer(tok).decode(load_tokenizer(tok).encode(text, add_special_tokens=False).ids) == text


def test_transformers_wrapper(tok, tmp_path):
    hf = to_transformers(tok, model_max_length=64)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (BOS, EOS, PAD)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2)
    assert len(hf) == 600 and hf.model_max_length == 64
    batch = hf(["short", "a longer piece of text"], padding=True)
    assert batch["input_ids"][0][-1] == hf.pad_token_id and batch["attention_mask"][0][-1] == 0
    hf.save_pretrained(tmp_path)                                         # loadable by AutoTokenizer
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode("God created") == hf.encode("God created")


def test_encoding_contract(tok, texts):
    seq_len = 16
    docs = ["short", texts[0] * 5, ""] + texts[:50]
    tokens, lengths = encode_documents(tok, docs, seq_len=seq_len)
    ids = special_ids(tok)
    raw = load_tokenizer(tok)
    assert tokens.dtype == np.int32 and tokens.shape == (len(docs), seq_len + 1)
    assert lengths.dtype == np.int32 and lengths.shape == (len(docs),)
    assert lengths.min() >= 2 and lengths.max() <= seq_len + 1
    assert (tokens[:, 0] == ids["bos"]).all()
    for row, length, text in zip(tokens, lengths, docs):
        text_ids = raw.encode(text, add_special_tokens=False).ids
        expected = [ids["bos"], *text_ids[:seq_len]] + ([ids["eos"]] if len(text_ids) < seq_len else [])
        assert row[:length].tolist() == expected
        assert (row[length:] == ids["pad"]).all()
    assert tokens[2, :2].tolist() == [ids["bos"], ids["eos"]] and lengths[2] == 2     # empty text
    assert lengths[1] == seq_len + 1 and ids["eos"] not in tokens[1]                   # truncated rows carry no eos
    assert tokens.max() < 600


def test_eos_boundary(tok):
    raw = load_tokenizer(tok)
    words = " the" * 40
    n = len(raw.encode(words, add_special_tokens=False).ids)
    _, lengths, n_tokens = encode_documents(tok, [words], seq_len=n + 1, return_n_tokens=True)
    assert lengths[0] == n + 2 and n_tokens[0] == n                     # eos fits exactly: the row is full
    tokens, lengths = encode_documents(tok, [words], seq_len=n)
    assert lengths[0] == n + 1 and tokens[0, -1] != special_ids(tok)["eos"]   # no room for eos
    tokens, lengths = encode_documents(tok, [], seq_len=8)
    assert tokens.shape == (0, 9) and lengths.shape == (0,)


def test_training_is_deterministic_across_processes(texts, tmp_path):
    """Rust hash maps are seeded per process: the trained vocabulary must not depend on it."""
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\x00".join(texts[:200]))
    code = ("import hashlib, sys; from libs.tokenizer import train_tokenizer; "
            f"texts = open({str(corpus)!r}).read().split('\\x00'); "
            "print(hashlib.sha1(train_tokenizer(texts, 500).encode()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
            .stdout.strip() for _ in range(2)}
    here = hashlib.sha1(train_tokenizer(texts[:200], 500).encode()).hexdigest()
    assert runs == {here}


def test_errors(texts, tok):
    with pytest.raises(ValueError, match="vocab_size=100 is below.*use at least 259"):
        train_tokenizer(texts, 100)
    with pytest.raises(ValueError, match="training split is empty"):
        train_tokenizer([], 300)
    with pytest.raises(TypeError, match="got one string; wrap it in a list"):
        train_tokenizer("just one string", 300)
    with pytest.raises(TypeError, match=r"texts\[1\] is a int, not a string"):
        encode_documents(tok, ["fine", 3], seq_len=8)
    with pytest.raises(ValueError, match="seq_len=0 must be a positive integer"):
        encode_documents(tok, ["fine"], seq_len=0)
    with pytest.raises(ValueError, match="tokenizer_json must be a tokenizer's JSON string"):
        encode_documents("gpt2", ["fine"], seq_len=8)
    from tokenizers import Tokenizer, models
    plain = Tokenizer(models.BPE()).to_str()
    with pytest.raises(ValueError, match="lacks the special tokens"):
        special_ids(plain)
