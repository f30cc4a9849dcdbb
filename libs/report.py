"""What a step shows a person: a list of report items, rendered as a card by the flow.

A stage's ``report(result)`` returns these plain objects; ``flows/cards.py`` turns them
into Metaflow card components. Keeping them free of Metaflow lets the same report be
rendered in a notebook or checked in a test.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

__all__ = ["Markdown", "Table", "Figure", "ReportItem"]


@dataclasses.dataclass(frozen=True)
class Markdown:
    """A paragraph or heading of Markdown text."""

    text: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: ``headers`` names the columns, ``rows`` holds one sequence per row."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A matplotlib figure (closed by the renderer after drawing)."""

    figure: Any
    title: str = ""


ReportItem = Markdown | Table | Figure
