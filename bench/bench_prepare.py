"""Chunking cost of one very long line: 1, 10 and 100 MB side by side, against the previous splitter; JSON.

    nice -n 5 python bench/bench_prepare.py --out bench/results/prepare.json
    python bench/bench_prepare.py --sizes-mb 1 10 --old-sizes-mb 1 --out /tmp/prepare.json   # quick

A single line (words separated by spaces, no newline) is the worst case of
``libs.corpus.chunk_text``: every piece comes from ``_split_long_line``. The previous splitter
re-sliced the rest of the line after every cut (``line = line[cut:]``), copying the remainder
each time: quadratic (the issue measured 5/10/20 MB at 1/7/51 s end to end). The current one
keeps positions into the line. For each size: the best of ``--repeats`` timings of
``chunk_text`` and of ``build_documents`` (chunk + dedup + split of that one source), MB/s and
the time ratio to the smallest size (a linear cost gives a ratio equal to the size ratio).
The previous splitter runs on the sizes in ``--old-sizes-mb`` only (100 MB would take many
minutes); it is reproduced here, as it was, only to measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from libs import corpus
from libs.corpus import build_documents, chunk_text


def _previous_split_long_line(line: str, limit: int) -> list[str]:
    """The splitter before the fix: re-slices the remainder after every cut (quadratic in the line length)."""
    pieces = []
    while len(line) > limit:
        space = line.rfind(" ", limit // 2, limit)
        cut = space + 1 if space > 0 else limit
        pieces.append(line[:cut])
        line = line[cut:]
    if line:
        pieces.append(line)
    return pieces


def one_line(n_chars: int, seed: int = 0) -> str:
    """``n_chars`` characters of space-separated pseudo-words on one line (seeded)."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10 ** 6)}" for _ in range(4096)]
    parts, size, i = [], 0, 0
    while size < n_chars:
        word = words[(i * 7919 + rng.randrange(4096)) % 4096]
        parts.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(parts)[:n_chars]


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 100])
    parser.add_argument("--old-sizes-mb", type=float, nargs="*", default=[1, 10],
                        help="sizes the previous (quadratic) splitter is timed on")
    parser.add_argument("--chunk-chars", type=int, default=600, help="prepare.chunk_chars (the default config's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prepare.json"))
    args = parser.parse_args()

    rows = []
    base = None
    for mb in args.sizes_mb:
        text = one_line(int(mb * 1_000_000))
        chunk_s = _best(lambda: chunk_text(text, args.chunk_chars, 64), args.repeats)
        build_s = _best(lambda: build_documents([("file:one_line.txt", text)], chunk_chars=args.chunk_chars,
                                                min_chars=64, max_docs_per_source=0, val_fraction=0.1, seed=0),
                        args.repeats)
        n_chunks = len(chunk_text(text, args.chunk_chars, 64))
        row = {"size_mb": mb, "n_chunks": n_chunks, "chunk_seconds": round(chunk_s, 4),
               "chunk_mb_per_s": round(mb / chunk_s, 1), "build_documents_seconds": round(build_s, 4)}
        if base is None:
            base = (mb, chunk_s)
        row["chunk_time_ratio_to_smallest"] = round(chunk_s / base[1], 2)
        row["size_ratio_to_smallest"] = round(mb / base[0], 2)
        if mb in args.old_sizes_mb:
            current = corpus._split_long_line
            corpus._split_long_line = _previous_split_long_line
            try:
                old_s = _best(lambda: chunk_text(text, args.chunk_chars, 64), 1)
                old_chunks = chunk_text(text, args.chunk_chars, 64)
            finally:
                corpus._split_long_line = current
            row["previous_chunk_seconds"] = round(old_s, 4)
            row["previous_same_chunks"] = old_chunks == chunk_text(text, args.chunk_chars, 64)
            row["speedup_vs_previous"] = round(old_s / chunk_s, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)

    olds = [r for r in rows if "previous_chunk_seconds" in r]
    result = {
        "benchmark": "chunking one long line (libs.corpus.chunk_text), current vs previous splitter",
        "chunk_chars": args.chunk_chars, "repeats": args.repeats, "rows": rows,
        "previous_time_ratio": (round(olds[-1]["previous_chunk_seconds"] / olds[0]["previous_chunk_seconds"], 1)
                                if len(olds) > 1 else None),
        "previous_size_ratio": round(olds[-1]["size_mb"] / olds[0]["size_mb"], 1) if len(olds) > 1 else None,
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
