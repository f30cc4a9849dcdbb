"""What a step shows a person: a list of report items, rendered as a card by the flow.

A stage's ``report(result)`` returns these plain objects; ``flows/flow_cards.py`` turns them
into Metaflow card components. Keeping them free of Metaflow lets the same report be
rendered in a notebook or checked in a test.

Cards carry user-controlled strings (model names, file names, config values). Metaflow's card
viewer renders raw HTML in Markdown as live HTML, so a name such as
``<img src=x onerror="alert(3)">`` would run script in whoever opens the card. The renderer
passes every Markdown text and title through :func:`safe_markdown` (raw HTML and script links
become literal text, formatting stays); table cells are rendered as text by Metaflow. Stages
that put a user string into Markdown can also quote it with :func:`code_span`, which shows
it verbatim.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

__all__ = ["Markdown", "Table", "Figure", "ReportItem", "safe_markdown", "code_span", "settings_card",
           "loss_curve_figure"]


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


def settings_card(heading: str, text: str, settings: Any) -> list[ReportItem]:
    """A flow's start card: a heading, a paragraph and the validated settings, one row per key."""
    from libs.schema import settings_rows

    return [Markdown(f"## {heading}\n\n{text}"), Table(["key", "value"], settings_rows(settings), title="Settings")]


def loss_curve_figure(curve: Sequence[dict], title: str, train_label: str = "training (eval mode)") -> Any:
    """Validation and training loss against the optimizer step (records with ``step``, ``val_loss``, ``train_eval_loss``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in curve]
    ax.plot(steps, [r["val_loss"] for r in curve], marker="o", label="validation")
    ax.plot(steps, [r["train_eval_loss"] for r in curve], marker=".", label=train_label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title.replace("$", r"\$"))      # a '$' in a model name is text, not matplotlib maths
    ax.legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Markdown that cannot run script
# ----------------------------------------------------------------------------------------------
# Backslash escapes cannot be used: Metaflow 2.19's card viewer drops a backslash-escaped
# character altogether (`a\*b` shows "ab", `\<` shows nothing), and HTML entities show verbatim
# ("&lt;" appears as "&lt;"). An invisible WORD JOINER (U+2060) after '<' does the job: no HTML
# tag, comment or autolink can start with "<" + U+2060, and the reader still sees "<".

WORD_JOINER = "\u2060"
_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)     # CommonMark: closed by a run of equal length
_TAG_START = re.compile("<(?!" + WORD_JOINER + ")")
# link targets kept as links: web and mail addresses, anchors, site paths; anything else (javascript:,
# data:, entity-encoded schemes such as javascript&#58;) loses its link syntax
_SAFE_TARGET = r"(?:https?://|mailto:|#|/(?!/))"
_LINK_TARGET = re.compile(r"\]\((?!\s*<?\s*" + _SAFE_TARGET + ")")
_LINK_DEFINITION = re.compile(r"^([ ]{0,3})\[(?=[^\]\n]*\]:(?!\s*<?\s*" + _SAFE_TARGET + "))", re.M)


def _outside_code(text: str, transform) -> str:
    """Apply ``transform`` to the parts of ``text`` outside code spans (where Markdown is interpreted)."""
    out, pos = [], 0
    for match in _CODE_SPAN.finditer(text):
        out.append(transform(text[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(transform(text[pos:]))
    return "".join(out)


def _neutralise(part: str) -> str:
    part = _LINK_TARGET.sub("]" + WORD_JOINER + "(", part)
    part = _LINK_DEFINITION.sub(lambda m: m.group(1) + WORD_JOINER + "[", part)
    return _TAG_START.sub("<" + WORD_JOINER, part)


def safe_markdown(text: str) -> str:
    """``text`` with every way to run script in the card viewer turned into literal text.

    Outside code spans, every ``<`` gets an invisible word joiner after it (no raw HTML block or
    inline tag, no comment, no autolink survives; the reader still sees ``<``), and links whose
    target is not a web or mail address, an anchor or a site path (``javascript:``, ``data:``)
    lose their link syntax. Headings, emphasis, lists, tables and code spans are kept (code spans
    show their text verbatim already). Idempotent.
    """
    return _outside_code(str(text), _neutralise)


def code_span(text: Any) -> str:
    """``text`` as an inline code span that no backtick inside it can close early.

    The way to show a user string (a model name, a file name) exactly as written: inside a code
    span nothing is formatting or HTML.
    """
    text = str(text).replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"
