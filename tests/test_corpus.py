import json

import pandas as pd
import pytest

from libs.corpus import CorpusError, build_documents, chunk_text, read_files, read_hf_dataset, read_source


@pytest.mark.parametrize("name, marker", [("shakespeare", "ACT"), ("kjv", "God"), ("stdlib", "def ")])
def test_builtin_sources_give_real_text(name, marker):
    texts = []
    for text in read_source(name):
        texts.append(text)
        if len(texts) == 30:
            break
    assert len(texts) == 30
    assert any(marker in t for t in texts)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(CorpusError, match="unknown corpus source 'bible'.*shakespeare, kjv, stdlib"):
        read_source("bible")


def test_chunking_respects_size_and_drops_short_pieces():
    text = "\n".join(f"line number {i} " * 3 for i in range(200))
    chunks = chunk_text(text, chunk_chars=300, min_chars=50)
    assert all(len(c) <= 300 for c in chunks)
    assert sum(len(c) for c in chunks) > 0.9 * len(text)
    assert chunk_text("tiny", 300, 50) == []
    assert all(len(c) <= 100 for c in chunk_text("x" * 1000, 100, 1))   # hard cut of a long line


def _docs(texts, **kw):
    args = dict(chunk_chars=200, min_chars=5, max_docs_per_source=0, val_fraction=0.3, seed=0)
    args.update(kw)
    return build_documents(iter(texts), **args)


def test_exact_duplicates_dropped_after_whitespace_normalisation():
    others = [("b", f"distinct filler document {i}") for i in range(30)]
    docs = _docs([("a", "hello   world, this is a document"), ("a", "hello world,\nthis is a document")] + others)
    assert len(docs) == 31
    assert docs.doc_id.is_unique


def test_split_is_by_document_and_deterministic_per_seed():
    texts = [("s", f"document number {i} with some words") for i in range(400)]
    a, b, c = _docs(texts), _docs(texts), _docs(texts, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.split.equals(c.split)
    assert 0.2 < (a.split == "val").mean() < 0.4
    assert set(a[a.split == "train"].doc_id).isdisjoint(a[a.split == "val"].doc_id)
    # a document's side does not depend on the other documents
    sub = _docs(texts[:100])
    merged = sub.merge(a, on="doc_id")
    assert (merged.split_x == merged.split_y).all()


def test_cap_keeps_every_source_represented():
    texts = [("big", f"big doc {i} xxxxx") for i in range(500)] + [("small", f"small doc {i} yyyy") for i in range(20)]
    docs = _docs(texts, max_docs_per_source=50)
    assert docs.source.value_counts().to_dict() == {"big": 50, "small": 20}


def test_empty_corpus_and_empty_split_errors():
    with pytest.raises(CorpusError, match="the corpus is empty"):
        _docs([("a", "")])
    with pytest.raises(CorpusError, match="split is empty"):
        _docs([("a", "only one document here")], val_fraction=0.01)


def test_user_files_txt_jsonl_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("first text file\nwith two lines")
    with (tmp_path / "b.jsonl").open("w") as fh:
        for i in range(3):
            fh.write(json.dumps({"body": f"json row {i}"}) + "\n")
    pd.DataFrame({"body": ["parquet row 0", "parquet row 1"]}).to_parquet(tmp_path / "c.parquet")
    got = list(read_files([str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl"), str(tmp_path / "c.parquet")],
                          text_field="body"))
    assert got[0] == ("file:a.txt", "first text file\nwith two lines")
    assert [t for s, t in got if s == "file:b.jsonl"] == ["json row 0", "json row 1", "json row 2"]
    assert [t for s, t in got if s == "file:c.parquet"] == ["parquet row 0", "parquet row 1"]


def test_user_file_errors(tmp_path):
    with pytest.raises(CorpusError, match="matched no file"):
        list(read_files([str(tmp_path / "missing/*.txt")]))
    (tmp_path / "x.jsonl").write_text('{"content": "no text field"}\n')
    with pytest.raises(CorpusError, match="has no field 'text'.*set prepare.text_field"):
        list(read_files([str(tmp_path / "x.jsonl")]))
    (tmp_path / "y.jsonl").write_text("not json\n")
    with pytest.raises(CorpusError, match="line 1 is not valid JSON"):
        list(read_files([str(tmp_path / "y.jsonl")]))
    (tmp_path / "z.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unsupported file type"):
        list(read_files([str(tmp_path / "z.csv")]))


def test_hf_dataset_path_on_local_files(tmp_path):
    """The hub code path (datasets.load_dataset) exercised offline through the json builder."""
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"hf row {i}"}) for i in range(5)))
    got = list(read_hf_dataset("json", data_files=str(path), max_rows=3))
    assert got == [("hf:json", "hf row 0"), ("hf:json", "hf row 1"), ("hf:json", "hf row 2")]
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(read_hf_dataset("json", data_files=str(path), text_field="body"))
