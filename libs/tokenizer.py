"""A byte-level BPE tokenizer trained on the training split, and the token-array contract.

Token arrays: ``tokens`` int32 ``(n, seq_len + 1)``, each row ``<|bos|> text... <|eos|>``
truncated to ``seq_len + 1`` and right-padded with ``<|pad|>``; ``lengths`` int32 ``(n,)``
counts the valid tokens of each row.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["SPECIAL_TOKENS", "train_tokenizer", "encode_documents", "special_ids", "to_transformers"]

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>")


def train_tokenizer(texts: list[str], vocab_size: int) -> str:
    """Train a byte-level BPE of ``vocab_size`` (special tokens included); returns its JSON."""
    if not texts:
        raise ValueError("cannot train a tokenizer on no text; the training split is empty")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the 256 byte symbols + {len(SPECIAL_TOKENS)} "
                         "special tokens a byte-level BPE needs; use at least 259")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def special_ids(tokenizer_json: str) -> dict[str, int]:
    """ids of bos, eos and pad."""
    tok = Tokenizer.from_str(tokenizer_json)
    return {"bos": tok.token_to_id("<|bos|>"), "eos": tok.token_to_id("<|eos|>"), "pad": tok.token_to_id("<|pad|>")}


def encode_documents(tokenizer_json: str, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``texts`` into the token-array contract.

    Returns
    -------
    tokens : int32 (n, seq_len + 1); lengths : int32 (n,), each in [2, seq_len + 1]
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} must be at least 2")
    tok = Tokenizer.from_str(tokenizer_json)
    ids = special_ids(tokenizer_json)
    width = seq_len + 1
    tokens = np.full((len(texts), width), ids["pad"], dtype=np.int32)
    lengths = np.empty(len(texts), dtype=np.int32)
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
        row = [ids["bos"], *enc.ids[:width - 1]]
        if len(row) < width:
            row.append(ids["eos"])
        tokens[i, :len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths


def to_transformers(tokenizer_json: str):
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast`` (decode, generate, save_pretrained)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token="<|bos|>",
                                   eos_token="<|eos|>", pad_token="<|pad|>")
