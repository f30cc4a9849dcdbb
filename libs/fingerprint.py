"""Fingerprints that say whether two runs' gap-zoo rows may be pooled.

* :func:`data_fingerprint`: the corpus and tokenizer a run trained on, from what ``prepare``
  produced (the tokenizer JSON and the four token arrays, bytes and shapes). Two runs whose
  prepare settings produce the same tokens get the same fingerprint; any change to the
  sources, the chunking, the split, the vocabulary or ``seq_len`` changes it.
* :func:`settings_fingerprint`: any JSON-able settings (a config section, a feature recipe),
  canonicalised (sorted keys) before hashing.

Both are hex SHA-256 prefixes (16 characters: collisions are not a concern at this scale).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

__all__ = ["data_fingerprint", "settings_fingerprint"]

_DIGITS = 16


def _update_array(h: "hashlib._Hash", name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
    h.update(array.tobytes())


def data_fingerprint(tokenizer_json: str, train_tokens: np.ndarray, train_lengths: np.ndarray,
                     val_tokens: np.ndarray, val_lengths: np.ndarray) -> str:
    """Hash of a prepared corpus: tokenizer JSON + training and validation token arrays.

    Pass the fields of ``steps.prepare.PrepareResult`` (GrowthFlow's and the LM zoo's prepare
    step both call this on their own result).
    """
    if not isinstance(tokenizer_json, str) or not tokenizer_json:
        raise ValueError("data_fingerprint needs the tokenizer JSON string of the prepare step")
    h = hashlib.sha256()
    h.update(b"growthflow-data-v1\n")
    h.update(tokenizer_json.encode())
    for name, array in (("train_tokens", train_tokens), ("train_lengths", train_lengths),
                        ("val_tokens", val_tokens), ("val_lengths", val_lengths)):
        _update_array(h, name, np.asarray(array))
    return h.hexdigest()[:_DIGITS]


def settings_fingerprint(settings: Any) -> str:
    """Hash of JSON-able settings (dicts, lists, numbers, strings), independent of key order."""
    try:
        blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise ValueError(f"settings_fingerprint needs plain JSON-able data (dicts, lists, numbers, "
                         f"strings): {exc}") from exc
    return hashlib.sha256(blob.encode()).hexdigest()[:_DIGITS]
