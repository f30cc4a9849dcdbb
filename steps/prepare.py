"""Stage 0: corpus -> documents -> train/validation split -> tokenizer -> token arrays."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time

import numpy as np
import pandas as pd

from libs.corpus import BUILTIN_SOURCES, build_documents, read_files, read_hf_dataset, read_source
from libs.report import Figure, Markdown, Table
from libs.schema import option
from libs.tokenizer import encode_documents, special_ids, train_tokenizer

__all__ = ["PrepareConfig", "PrepareResult", "run", "report"]


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
        if not self.sources and not self.files and not self.hf_dataset:
            raise ValueError("no corpus: sources, files and hf_dataset are all empty; name at least one")
        if self.min_chunk_chars > self.chunk_chars:
            raise ValueError(f"min_chunk_chars={self.min_chunk_chars} exceeds chunk_chars={self.chunk_chars}")


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    documents: pd.DataFrame
    tokenizer_json: str
    train_tokens: np.ndarray
    train_lengths: np.ndarray
    val_tokens: np.ndarray
    val_lengths: np.ndarray
    train_texts: list[str]
    train_sources: np.ndarray
    val_sources: np.ndarray
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    seq_len: int
    source_counts: pd.DataFrame
    seconds: float


def _texts(cfg: PrepareConfig):
    for name in cfg.sources:
        yield from ((name, text) for text in read_source(name))
    if cfg.files:
        yield from read_files(cfg.files, cfg.text_field)
    if cfg.hf_dataset:
        yield from read_hf_dataset(cfg.hf_dataset, split=cfg.hf_split, text_field=cfg.text_field,
                                   max_rows=cfg.hf_max_rows)


def run(cfg: PrepareConfig, *, seed: int) -> PrepareResult:
    """Read, chunk, dedup and split the corpus; train the tokenizer on the training split; tokenize."""
    t0 = time.perf_counter()
    docs = build_documents(_texts(cfg), chunk_chars=cfg.chunk_chars, min_chars=cfg.min_chunk_chars,
                           max_docs_per_source=cfg.max_docs_per_source, val_fraction=cfg.val_fraction, seed=seed)
    train, val = docs[docs.split == "train"], docs[docs.split == "val"]
    print(f"[prepare] {len(docs)} documents ({len(train)} train, {len(val)} validation) from "
          f"{docs.source.nunique()} sources; training the tokenizer", file=sys.stderr, flush=True)
    tokenizer_json = train_tokenizer(list(train.text), cfg.vocab_size)
    ids = special_ids(tokenizer_json)
    train_tokens, train_lengths = encode_documents(tokenizer_json, list(train.text), cfg.seq_len)
    val_tokens, val_lengths = encode_documents(tokenizer_json, list(val.text), cfg.seq_len)
    from tokenizers import Tokenizer
    vocab_size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    counts = (docs.assign(n_train=docs.split.eq("train"), n_val=docs.split.eq("val"))
              .groupby("source").agg(n_docs=("doc_id", "size"), n_train=("n_train", "sum"), n_val=("n_val", "sum"),
                                     n_chars=("n_chars", "sum")).reset_index())
    train_token_counts = pd.Series(train_lengths - 1, index=train.source.values).groupby(level=0).sum()
    counts["n_train_tokens"] = counts.source.map(train_token_counts).fillna(0).astype(int)
    return PrepareResult(
        documents=docs.reset_index(drop=True), tokenizer_json=tokenizer_json, train_tokens=train_tokens,
        train_lengths=train_lengths, val_tokens=val_tokens, val_lengths=val_lengths, train_texts=list(train.text),
        train_sources=train.source.to_numpy(dtype=str), val_sources=val.source.to_numpy(dtype=str),
        vocab_size=vocab_size, pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"], seq_len=cfg.seq_len,
        source_counts=counts, seconds=time.perf_counter() - t0)


def report(result: PrepareResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result.source_counts
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].barh(counts.source, counts.n_train, label="train")
    axes[0].barh(counts.source, counts.n_val, left=counts.n_train, label="validation")
    axes[0].set_xlabel("documents")
    axes[0].set_title("Corpus composition by source")
    axes[0].legend()
    axes[1].hist(result.train_lengths, bins=30)
    axes[1].set_xlabel("tokens per training document (truncated at seq_len + 1)")
    axes[1].set_ylabel("documents")
    axes[1].set_title("Document lengths")
    fig.tight_layout()
    n_tokens = int((result.train_lengths - 1).sum())
    return [
        Markdown(f"## Corpus\n\n{len(result.documents)} documents: **{len(result.train_tokens)} train**, "
                 f"{len(result.val_tokens)} validation; {n_tokens:,} training tokens; byte-level BPE vocabulary "
                 f"{result.vocab_size}; {result.seq_len} tokens per example; {result.seconds:.1f} s."),
        Table(list(counts.columns), counts.values.tolist(), title="Per-source counts"),
        Figure(fig, title="Composition and lengths"),
    ]
