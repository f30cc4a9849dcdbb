"""The token arrays a stage trains or evaluates on, travelling as one object.

The prepare step stores each array as its own plain artifact (anyone can open them with
the Client API); the stages that need several of them take one :class:`TokenData`
instead of six to nine separate arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["TokenData"]

_FIELDS = ("train_tokens", "train_lengths", "val_tokens", "val_lengths", "train_sources", "vocab_size",
           "seq_len", "bos_id", "eos_id")


@dataclasses.dataclass(frozen=True)
class TokenData:
    """Tokenized training and validation documents (one row per document).

    ``*_tokens`` are int32 ``(n, seq_len + 1)`` arrays padded after each row's ``*_lengths``
    valid tokens; ``train_sources`` names each training row's corpus source.
    """

    train_tokens: np.ndarray     # int32 (n_train, seq_len + 1)
    train_lengths: np.ndarray    # int32 (n_train,)
    val_tokens: np.ndarray       # int32 (n_val, seq_len + 1)
    val_lengths: np.ndarray      # int32 (n_val,)
    train_sources: np.ndarray    # str (n_train,)
    vocab_size: int
    seq_len: int
    bos_id: int
    eos_id: int

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            tokens, lengths = getattr(self, f"{split}_tokens"), getattr(self, f"{split}_lengths")
            if tokens.ndim != 2 or len(tokens) != len(lengths):
                raise ValueError(f"{split}_tokens must be (n, seq_len + 1) with one length per row; got shapes "
                                 f"{tokens.shape} and {lengths.shape}")
        if len(self.train_sources) != len(self.train_tokens):
            raise ValueError(f"train_sources has {len(self.train_sources)} rows for {len(self.train_tokens)} "
                             "training rows")

    @property
    def n_train(self) -> int:
        return len(self.train_tokens)

    @property
    def n_val(self) -> int:
        return len(self.val_tokens)

    @classmethod
    def from_attrs(cls, obj: Any) -> "TokenData":
        """Collect the fields from any object that has them as attributes (e.g. a flow's artifacts)."""
        return cls(**{name: getattr(obj, name) for name in _FIELDS})

    def train_rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, lengths)`` of the given training rows."""
        indices = np.asarray(indices)
        return self.train_tokens[indices], self.train_lengths[indices]
