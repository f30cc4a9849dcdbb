"""steps.prepare: the stage on real text at a small size, user files, config and data errors, the report."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from libs.corpus import CorpusError
from libs.report import Figure, Markdown, Table
from libs.schema import ConfigError, parse
from libs.tokenizer import encode_documents, load_tokenizer, train_tokenizer
from steps import prepare

SMALL = prepare.PrepareConfig(max_docs_per_source=60, chunk_chars=300, vocab_size=400, seq_len=32)


@pytest.fixture(scope="module")
def result():
    return prepare.run(SMALL, seed=0, progress=False)


def test_every_builtin_source_is_represented(result):
    counts = result.source_counts
    assert list(counts.columns) == ["source", "n_docs", "n_train", "n_val", "n_chars", "n_train_tokens"]
    assert counts.source.tolist() == ["kjv", "shakespeare", "stdlib"]
    assert (counts.n_docs == 60).all()                                   # the cap, every source full
    assert (counts.n_docs == counts.n_train + counts.n_val).all() and (counts.n_val > 0).all()
    assert int(counts.n_docs.sum()) == len(result.documents)
    assert int(counts.n_chars.sum()) == int(result.documents.n_chars.sum())
    assert int(counts.n_train_tokens.sum()) == int((result.train_lengths - 1).sum())
    docs = result.documents
    assert list(docs.columns) == ["doc_id", "source", "split", "n_chars", "text", "n_tokens"]
    assert docs.doc_id.is_unique and (docs.n_chars <= 300).all() and (docs.n_chars >= 64).all()


def test_token_arrays_follow_the_contract(result):
    width = SMALL.seq_len + 1
    for tokens, lengths in ((result.train_tokens, result.train_lengths), (result.val_tokens, result.val_lengths)):
        assert tokens.dtype == np.int32 and tokens.ndim == 2 and tokens.shape[1] == width
        assert lengths.dtype == np.int32 and lengths.shape == (len(tokens),)
        assert lengths.min() >= 2 and lengths.max() <= width
        assert (tokens[:, 0] == result.bos_id).all()
        padding = np.arange(width)[None, :] >= lengths[:, None]
        assert (tokens[padding] == result.pad_id).all() and (tokens[~padding] != result.pad_id).all()
        assert tokens.max() < result.vocab_size
    assert len({result.bos_id, result.eos_id, result.pad_id}) == 3
    assert result.vocab_size == 400 == load_tokenizer(result.tokenizer_json).get_vocab_size()
    assert result.seq_len == 32 and result.seconds > 0


def test_rows_align_with_documents(result):
    docs = result.documents
    train, val = docs[docs.split == "train"], docs[docs.split == "val"]
    assert result.train_texts == train.text.tolist()
    assert result.train_sources.tolist() == train.source.tolist() and result.val_sources.tolist() == val.source.tolist()
    assert result.train_sources.dtype.kind == "U"
    tokens, lengths = encode_documents(result.tokenizer_json, val.text.tolist(), result.seq_len)
    np.testing.assert_array_equal(tokens, result.val_tokens)
    np.testing.assert_array_equal(lengths, result.val_lengths)
    truncated = docs.n_tokens.to_numpy()[(docs.split == "train").to_numpy()] >= result.seq_len
    np.testing.assert_array_equal(truncated, result.train_lengths == result.seq_len + 1)


def test_tokenizer_is_trained_on_the_training_split_only(result):
    assert result.tokenizer_json == train_tokenizer(result.train_texts, SMALL.vocab_size)


def test_same_seed_same_data_other_seed_other_subsample(result):
    again = prepare.run(SMALL, seed=0, progress=False)
    pd.testing.assert_frame_equal(again.documents, result.documents)
    np.testing.assert_array_equal(again.train_tokens, result.train_tokens)
    assert again.tokenizer_json == result.tokenizer_json
    other = prepare.run(SMALL, seed=1, progress=False)
    assert set(other.documents.doc_id) != set(result.documents.doc_id)
    train = result.documents[result.documents.split == "train"]
    assert set(train.doc_id).isdisjoint(result.documents[result.documents.split == "val"].doc_id)


def test_split_is_by_document_and_follows_the_seed(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(f"Document {i}: " + "some words " * 8 for i in range(300)))
    cfg = prepare.PrepareConfig(sources=(), files=(str(tmp_path / "c.txt"),), chunk_chars=120, min_chunk_chars=20,
                                vocab_size=300, seq_len=16, val_fraction=0.2)
    a, b, c = (prepare.run(cfg, seed=s, progress=False) for s in (0, 0, 1))
    assert len(a.documents) == 300 and 0.12 < (a.documents.split == "val").mean() < 0.28
    pd.testing.assert_frame_equal(a.documents, b.documents)
    assert a.documents.doc_id.tolist() == c.documents.doc_id.tolist()           # same documents...
    assert (a.documents.split != c.documents.split).mean() > 0.1               # ...split another way
    assert len(a.train_tokens) == (a.documents.split == "train").sum()


def test_user_files_only(tmp_path):
    lines = [f"Line {i}: a sentence of a user's own text, with words {i * 7} and {i * 13}." for i in range(400)]
    (tmp_path / "own.txt").write_text("\n".join(lines[:200]))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in lines[200:300]))
    pd.DataFrame({"body": lines[300:]}).to_parquet(tmp_path / "table.parquet")
    cfg = prepare.PrepareConfig(sources=[], files=[str(tmp_path / "*.txt"), str(tmp_path / "rows.jsonl"),
                                                   str(tmp_path / "table.parquet")],
                                text_field="body", chunk_chars=200, min_chunk_chars=20, vocab_size=300, seq_len=16,
                                val_fraction=0.2)
    r = prepare.run(cfg, seed=0, progress=False)
    assert r.source_counts.source.tolist() == sorted(f"file:{p}" for p in cfg.files)
    assert r.source_counts.set_index("source").n_docs.to_dict()[f"file:{tmp_path / 'rows.jsonl'}"] == 100
    assert len(r.train_tokens) + len(r.val_tokens) == len(r.documents) and len(r.val_tokens) > 0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="no corpus: prepare.sources, prepare.files and prepare.hf_dataset"):
        prepare.PrepareConfig(sources=(), files=())
    with pytest.raises(ValueError, match="min_chunk_chars=60 exceeds prepare.chunk_chars=50"):
        prepare.PrepareConfig(chunk_chars=50, min_chunk_chars=60)
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['bible'\]; built-in sources are shakespeare"):
        prepare.PrepareConfig(sources=("kjv", "bible"))
    with pytest.raises(ValueError, match=r"lists \['kjv'\] more than once"):
        prepare.PrepareConfig(sources=("kjv", "kjv"))
    with pytest.raises(ValueError, match="prepare.files must be a list of strings"):
        prepare.PrepareConfig(files="data/*.txt")
    with pytest.raises(ValueError, match="prepare.hf_split is empty"):
        prepare.PrepareConfig(hf_dataset="roneneldan/TinyStories", hf_split="")
    with pytest.raises(ConfigError, match="key 'sources' has value .*'bible'.*one of 'shakespeare'"):
        parse(prepare.PrepareConfig, {"sources": ["bible"]}, source="x.toml")
    cfg = parse(prepare.PrepareConfig, {"sources": ["kjv"], "files": ["a.txt"]}, source="x.toml")
    assert cfg.sources == ("kjv",) and cfg.files == ("a.txt",)
    assert hash(prepare.PrepareConfig(sources=["kjv"])) == hash(prepare.PrepareConfig(sources=("kjv",)))


def test_data_errors_are_clear(tmp_path, monkeypatch):
    def fails(match, **kw):
        cfg = dataclasses.replace(SMALL, sources=(), **kw)
        with pytest.raises(CorpusError, match=match):
            prepare.run(cfg, seed=0, progress=False)

    fails("'.*nothing-here.*' matched no file", files=(str(tmp_path / "nothing-here" / "*.txt"),))
    (tmp_path / "empty.txt").write_text("")
    fails("empty.txt: the file is empty; remove it from prepare.files", files=(str(tmp_path / "empty.txt"),))
    (tmp_path / "short.txt").write_text("too short")
    fails("the corpus is empty after chunking", files=(str(tmp_path / "short.txt"),))
    (tmp_path / "binary.txt").write_bytes(b"text\x00\x00\x01\x02" * 100)
    fails("binary.txt: binary content, not text", files=(str(tmp_path / "binary.txt"),))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"content": "x" * 100}) + "\n")
    fails("has no field 'text'.*set prepare.text_field", files=(str(tmp_path / "rows.jsonl"),))
    pd.DataFrame({"content": ["x" * 100]}).to_parquet(tmp_path / "t.parquet")
    fails("no column 'text'", files=(str(tmp_path / "t.parquet"),))
    # One document lands in one split or the other, depending on the seed: each side's error names it.
    (tmp_path / "one.txt").write_text("a single document that is long enough to be kept " * 2)
    monkeypatch.chdir(tmp_path)   # a relative glob: the source label (part of the split hash) is the same everywhere
    messages = set()
    for seed in range(20):
        with pytest.raises(CorpusError, match="the (validation|train) split is empty") as err:
            prepare.run(dataclasses.replace(SMALL, sources=(), files=("one.txt",), val_fraction=0.5),
                        seed=seed, progress=False)
        messages.add(str(err.value).split(":")[0])
    assert messages == {"the validation split is empty", "the train split is empty"}


def test_check_inputs_reads_no_corpus_and_names_the_bad_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("plain text " * 20)
    cfg = dataclasses.replace(SMALL, files=(str(tmp_path / "*.txt"),))
    assert prepare.check_inputs(cfg) == [str(good)]
    assert prepare.check_inputs(SMALL) == []                      # built-in sources only: their packages exist
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(CorpusError, match=r"bad.txt: not UTF-8 text \(byte 0xe9 at byte 3, line 1\)"):
        prepare.check_inputs(cfg)


def test_report(result):
    import matplotlib.pyplot as plt

    items = prepare.report(result)
    assert [type(i) for i in items] == [Markdown, Table, Figure]
    headline = items[0].text
    assert f"{len(result.train_tokens)} train" in headline and f"{len(result.val_tokens)} validation" in headline
    assert f"{int((result.train_lengths - 1).sum()):,} training tokens" in headline and "400" in headline
    table = items[1]
    assert [row[0] for row in table.rows] == ["kjv", "shakespeare", "stdlib", "total"]
    assert table.rows[-1][1] == len(result.documents) and len(table.headers) == len(table.rows[0])
    fig = items[2].figure
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Corpus composition by source", "Document token lengths"]
    composition, lengths = fig.axes
    assert [t.get_text() for t in composition.get_yticklabels()] == ["kjv", "shakespeare", "stdlib"]
    assert composition.get_xlabel() and lengths.get_xlabel() and lengths.get_ylabel()
    assert composition.get_legend() is not None and lengths.get_legend() is not None
    plt.close(fig)
