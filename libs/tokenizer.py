"""A byte-level BPE tokenizer trained on the training split, and the token-array contract.

The tokenizer travels as its ``tokenizers`` JSON string (:func:`train_tokenizer` returns it,
every other function accepts it). Its special tokens are ``<|bos|>``, ``<|eos|>`` and
``<|pad|>``; its post-processor puts ``<|bos|>`` before a text encoded with special tokens,
so that ``tokenizer(prompt)`` in Hugging Face tools starts like every training row.

Token arrays (:func:`encode_documents`): ``tokens`` int32 ``(n, seq_len + 1)``, row ``i`` is
``<|bos|> text_i... <|eos|>`` truncated to ``seq_len + 1`` tokens (the ``<|eos|>`` only when it
fits) and right-padded with ``<|pad|>``; ``lengths`` int32 ``(n,)`` counts each row's valid
tokens (always >= 2).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

__all__ = ["SPECIAL_TOKENS", "BOS", "EOS", "PAD", "train_tokenizer", "load_tokenizer", "special_ids",
           "encode_documents", "to_transformers"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got one string; wrap it in a list")
    texts = list(texts)
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{what}[{bad}] is a {type(texts[bad]).__name__}, not a string")
    return texts


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> str:
    """Train a byte-level BPE on ``texts``.

    Parameters
    ----------
    texts : the training documents (the training split only: validation text must not shape
        the vocabulary).
    vocab_size : the vocabulary size, special tokens and the 256 byte symbols included
        (at least 259). A small corpus may stop short of it: read the actual size from the
        result (``load_tokenizer(json).get_vocab_size()``).

    Returns
    -------
    The tokenizer's JSON string. Training is deterministic: the same texts and size give the
    same JSON.
    """
    texts = _check_texts(texts, "texts")
    if not texts:
        raise ValueError("cannot train a tokenizer on no text: the training split is empty; add documents")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size!r} is below the 256 byte symbols + {len(SPECIAL_TOKENS)} special "
                         f"tokens a byte-level BPE needs; use at least {_MIN_VOCAB} (4096 is a good small default)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                             special_tokens=[(BOS, bos_id)])
    return tokenizer.to_str()


def load_tokenizer(tokenizer_json: str) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of a JSON string (checks the special tokens are there)."""
    if not isinstance(tokenizer_json, str) or not tokenizer_json.lstrip().startswith("{"):
        raise ValueError("tokenizer_json must be a tokenizer's JSON string (train_tokenizer's output), "
                         f"got {str(tokenizer_json)[:40]!r}")
    tokenizer = Tokenizer.from_str(tokenizer_json)
    missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise ValueError(f"the tokenizer lacks the special tokens {missing}; train it with train_tokenizer")
    return tokenizer


def special_ids(tokenizer_json: str) -> dict[str, int]:
    """``{"bos": id, "eos": id, "pad": id}`` of the tokenizer."""
    tokenizer = load_tokenizer(tokenizer_json)
    return {"bos": tokenizer.token_to_id(BOS), "eos": tokenizer.token_to_id(EOS), "pad": tokenizer.token_to_id(PAD)}


def encode_documents(tokenizer_json: str, texts: Sequence[str], seq_len: int, *,
                     return_n_tokens: bool = False) -> tuple[np.ndarray, ...]:
    """Encode ``texts`` into the token-array contract (one row per text, batch-encoded).

    Parameters
    ----------
    tokenizer_json : the tokenizer (:func:`train_tokenizer`'s output).
    texts : n documents.
    seq_len : tokens the model sees per row; rows hold ``seq_len + 1`` tokens (inputs and
        shifted targets).
    return_n_tokens : also return each text's full token count (before truncation).

    Returns
    -------
    tokens : int32 (n, seq_len + 1): ``<|bos|>``, the text's tokens, ``<|eos|>`` when it fits,
        then ``<|pad|>``.
    lengths : int32 (n,): valid tokens per row, in [2, seq_len + 1].
    n_tokens : int64 (n,), only with ``return_n_tokens``: tokens of each whole text (no special
        tokens); a row drops text when ``n_tokens > seq_len`` and its ``<|eos|>`` when ``n_tokens >= seq_len``.
    """
    texts = _check_texts(texts, "texts")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer (e.g. 128)")
    tokenizer = load_tokenizer(tokenizer_json)
    bos, eos, pad = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
    width = int(seq_len) + 1
    # Truncate the id lists here: the tokenizer's own truncation keeps the cut-off tails as
    # "overflowing" encodings, which costs more than it saves.
    full_ids = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    n_tokens = np.fromiter(map(len, full_ids), dtype=np.int64, count=len(full_ids))           # (n,)
    ids = [row[:width - 1] for row in full_ids]                                                # room for bos
    n_text = np.minimum(n_tokens, width - 1)                                                   # (n,)
    has_eos = n_text < width - 1                                                               # (n,)
    tokens = np.full((len(texts), width), pad, dtype=np.int32)                                # (n, width)
    tokens[:, 0] = bos
    columns = np.arange(width)[None, :]                                                        # (1, width)
    text_cells = (columns >= 1) & (columns <= n_text[:, None])                                 # (n, width)
    tokens[text_cells] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(n_text.sum()))
    rows = np.flatnonzero(has_eos)
    tokens[rows, n_text[rows] + 1] = eos
    lengths = (1 + n_text + has_eos).astype(np.int32)
    return (tokens, lengths, n_tokens) if return_n_tokens else (tokens, lengths)


def to_transformers(tokenizer_json: str, *, model_max_length: int | None = None):
    """The tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Use it to decode model outputs, to tokenize prompts for ``model.generate`` (encoding with
    special tokens puts ``<|bos|>`` first, as in training) or to ``save_pretrained`` next to a
    model. ``decode(ids, skip_special_tokens=True)`` inverts ``encode``.

    Parameters
    ----------
    tokenizer_json : the tokenizer (:func:`train_tokenizer`'s output).
    model_max_length : the longest input the model takes (e.g. ``seq_len``); None leaves it unset.
    """
    from transformers import PreTrainedTokenizerFast

    kwargs = {} if model_max_length is None else {"model_max_length": int(model_max_length)}
    return PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(tokenizer_json), bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, clean_up_tokenization_spaces=False, **kwargs)
