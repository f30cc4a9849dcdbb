"""Stage 1: embed the training documents (the space k-means clusters in)."""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from libs.embedders import MiniLMEmbedder, SentenceTransformerEmbedder, TfidfSvdEmbedder
from libs.report import Figure, Markdown

__all__ = ["EmbedConfig", "EmbedResult", "run", "report"]

from libs.schema import option


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Which embedder, and its settings."""

    method: str = option("minilm", "'minilm' (all-MiniLM-L6-v2, shipped in a package), 'tfidf' (TF-IDF + "
                         "truncated SVD, fast), 'sentence-transformers' (model_name: a local folder, or a hub "
                         "name with a network)", choices=("minilm", "tfidf", "sentence-transformers"))
    model_name: str = option("", "for method 'sentence-transformers': a model folder or hub name")
    max_seq_length: int = option(64, "transformer embedders truncate documents to this many tokens", min=8)
    batch_size: int = option(64, "texts per embedding batch", min=1)
    tfidf_dim: int = option(64, "dimensions of the TF-IDF + SVD embedding", min=2)

    def __post_init__(self) -> None:
        if self.method == "sentence-transformers" and not self.model_name:
            raise ValueError("method='sentence-transformers' needs model_name (a local folder or a hub name)")


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    embeddings: np.ndarray
    embedder_name: str
    embedder_version: str
    seconds: float
    texts_per_s: float


def make_embedder(cfg: EmbedConfig, seed: int, progress: bool = True):
    """The embedder the config names."""
    if cfg.method == "tfidf":
        return TfidfSvdEmbedder(dim=cfg.tfidf_dim, random_state=seed)
    kwargs = dict(max_seq_length=cfg.max_seq_length, batch_size=cfg.batch_size, progress=progress)
    if cfg.method == "minilm":
        return MiniLMEmbedder(**kwargs)
    return SentenceTransformerEmbedder(cfg.model_name, **kwargs)


def run(cfg: EmbedConfig, texts: list[str], *, seed: int, progress: bool = True) -> EmbedResult:
    """Embed ``texts`` -> float32 (n, d) unit rows, in the input order."""
    embedder = make_embedder(cfg, seed, progress)
    print(f"[embed] {len(texts)} documents with {embedder.name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    embeddings = embedder.embed(list(texts))
    seconds = time.perf_counter() - t0
    if not np.isfinite(embeddings).all():
        raise ValueError(f"the {embedder.name} embedder returned NaN or infinite values; check the input texts")
    return EmbedResult(embeddings=embeddings, embedder_name=embedder.name, embedder_version=embedder.version,
                       seconds=seconds, texts_per_s=len(texts) / max(seconds, 1e-9))


def report(result: EmbedResult) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = result.embeddings - result.embeddings.mean(0)
    _, _, vt = np.linalg.svd(x[:2000], full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5)
    ax.set_title("Documents, first two principal components")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    n, d = result.embeddings.shape
    return [Markdown(f"## Embeddings\n\n{n} documents x {d} dimensions with **{result.embedder_name}** "
                     f"({result.embedder_version}) in {result.seconds:.1f} s ({result.texts_per_s:.0f} texts/s)."),
            Figure(fig, title="Embedding space")]
