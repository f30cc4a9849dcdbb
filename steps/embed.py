"""Stage: embed the training documents (the space the select stage clusters in).

``run(cfg, texts, seed=...)`` returns float32 ``(n, d)`` unit rows in the order of ``texts``
(row i embeds training document i), the embedder's name and version, and its speed.

``method = "reference"``: the documents are embedded by the select step's reference model (its
mean-pooled hidden states, the space in which the loss being estimated lives), because that
model only exists inside select_data. This step then returns an empty ``(0, 0)`` matrix and says
so; select_data sees no embeddings and embeds with its reference model.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from libs.embedders import MiniLMEmbedder, SentenceTransformerEmbedder, TfidfSvdEmbedder
from libs.report import Figure, Markdown, Table
from libs.schema import option

__all__ = ["METHODS", "EmbedConfig", "EmbedResult", "make_embedder", "run", "report"]

METHODS = ("minilm", "tfidf", "sentence-transformers", "reference")
REFERENCE_NAME = "reference-hidden-states (computed in select_data)"


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Which embedder, and its settings."""

    method: str = option("minilm", "'minilm' (all-MiniLM-L6-v2 shipped in a package, offline), 'tfidf' (TF-IDF + "
                         "truncated SVD, fast), 'sentence-transformers' (model_name: a local folder, or a hub "
                         "name where there is a network), 'reference' (the select step's reference model's "
                         "mean-pooled hidden states, computed in select_data: this step passes no embeddings)",
                         choices=METHODS)
    model_name: str = option("", "for method 'sentence-transformers': a local model folder or a hub model name")
    max_seq_length: int = option(128, "transformer embedders truncate each document to this many tokens (the "
                                 "main lever on CPU time: 64 is about twice as fast as 128)", min=8)
    batch_size: int = option(64, "documents per embedding batch (batches are sorted by length)", min=1)
    device: str = option("cpu", "where transformer embedders run: 'cpu', 'cuda' or 'auto'",
                         choices=("cpu", "cuda", "auto"))
    tfidf_dim: int = option(64, "dimensions of the TF-IDF + SVD embedding", min=2)
    tfidf_max_features: int = option(50000, "vocabulary cap of the TF-IDF embedder", min=16)
    max_docs: int = option(20000, "refuse to embed more documents than this with a transformer embedder "
                           "(about 7 minutes on 2 CPU cores at 128 tokens); 0 = no limit", min=0)

    def __post_init__(self) -> None:
        if self.method == "sentence-transformers" and not self.model_name:
            raise ValueError("method='sentence-transformers' needs model_name (a local model folder or a hub name); "
                             "or use method='minilm'")
        if self.method != "sentence-transformers" and self.model_name:
            raise ValueError(f"model_name={self.model_name!r} is only used with method='sentence-transformers' "
                             f"(method is {self.method!r}); remove it or change the method")


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """embeddings float32 (n, d) unit rows in the input order; which embedder; how fast."""

    embeddings: np.ndarray      # float32 (n, d); (0, 0) for method "reference" (select_data embeds)
    embedder_name: str
    embedder_version: str
    seconds: float
    texts_per_s: float


def make_embedder(cfg: EmbedConfig, *, seed: int, progress: bool = True):
    """The embedder ``cfg`` names (an object with ``name``, ``version``, ``embed(texts)``)."""
    if cfg.method == "tfidf":
        return TfidfSvdEmbedder(dim=cfg.tfidf_dim, max_features=cfg.tfidf_max_features, random_state=seed)
    kwargs = dict(max_seq_length=cfg.max_seq_length, batch_size=cfg.batch_size, device=cfg.device,
                  progress=progress)
    if cfg.method == "minilm":
        return MiniLMEmbedder(**kwargs)
    return SentenceTransformerEmbedder(cfg.model_name, **kwargs)


def run(cfg: EmbedConfig, texts, *, seed: int, progress: bool = True) -> EmbedResult:
    """Embed ``texts`` (the training documents, in row order).

    Parameters
    ----------
    cfg : EmbedConfig
    texts : sequence of n strings
    seed : seeds the TF-IDF embedder's SVD (transformer embedders are deterministic)

    Returns
    -------
    EmbedResult with ``embeddings`` float32 (n, d)
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no documents to embed: the training split is empty (check the prepare settings)")
    if cfg.method == "reference":
        print(f"[embed] method 'reference': select_data embeds the {len(texts)} documents with its reference model",
              file=sys.stderr, flush=True)
        return EmbedResult(embeddings=np.zeros((0, 0), dtype=np.float32), embedder_name=REFERENCE_NAME,
                           embedder_version="mean-pooled last hidden state of select_data's reference model",
                           seconds=0.0, texts_per_s=0.0)
    if cfg.method not in ("tfidf", "reference") and cfg.max_docs and len(texts) > cfg.max_docs:
        raise ValueError(f"{len(texts)} documents exceed embed.max_docs={cfg.max_docs} for the {cfg.method} embedder "
                         "(CPU time grows with it); raise embed.max_docs (0 = no limit), lower "
                         "prepare.max_docs_per_source, or use embed.method='tfidf'")
    embedder = make_embedder(cfg, seed=seed, progress=progress)
    print(f"[embed] {len(texts)} documents with {embedder.name}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    embeddings = embedder.embed(texts)
    seconds = time.perf_counter() - t0
    if embeddings.shape[0] != len(texts) or not np.isfinite(embeddings).all():
        raise ValueError(f"the {embedder.name} embedder returned {embeddings.shape} with non-finite values or the "
                         f"wrong row count for {len(texts)} texts")
    return EmbedResult(embeddings=np.ascontiguousarray(embeddings, dtype=np.float32), embedder_name=embedder.name,
                       embedder_version=embedder.version, seconds=seconds,
                       texts_per_s=len(texts) / max(seconds, 1e-9))


def report(result: EmbedResult) -> list:
    """The embed card: what embedded how many documents how fast, and a 2-D view of the space."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.embeddings.size == 0:
        return [Markdown(f"## Embeddings\n\n**{result.embedder_name}**: {result.embedder_version}. The select_data "
                         "step embeds the documents with its reference model (see its card).")]
    x = result.embeddings.astype(np.float64)
    n, d = x.shape
    rows = np.random.default_rng(0).choice(n, min(n, 3000), replace=False)
    centered = x[rows] - x[rows].mean(0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T
    explained = singular ** 2 / max((singular ** 2).sum(), 1e-300)
    cosine = np.clip((x[rows[:500]] @ x[rows[:500]].T)[np.triu_indices(min(len(rows), 500), 1)], -1, 1)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5)
    axes[0].set_title("Documents on the first two principal components")
    axes[0].set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    axes[0].set_ylabel(f"PC 2 ({explained[1] if len(explained) > 1 else 0:.0%})")
    axes[1].hist(cosine, bins=40)
    axes[1].set_title("Cosine similarity between document pairs")
    axes[1].set_xlabel("cosine similarity")
    axes[1].set_ylabel("pairs (500-document sample)")
    fig.tight_layout()
    return [Markdown(f"## Embeddings\n\n**{n} documents x {d} dimensions** with {result.embedder_name} in "
                     f"{result.seconds:.1f} s ({result.texts_per_s:.0f} documents/s).\n\n"
                     f"Version: {result.embedder_version}."),
            Table(["documents", "dimensions", "seconds", "documents/s", "median pairwise cosine"],
                  [[n, d, round(result.seconds, 2), round(result.texts_per_s, 1), round(float(np.median(cosine)), 3)]],
                  title="Embedding run"),
            Figure(fig, title="Embedding space")]
