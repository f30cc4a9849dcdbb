"""libs.report: Markdown that reaches a card can show user strings but never run them.

The browser-side proof (a whole run with markup in its names, rendered in Chromium) is in
tests/test_card_browser.py; these tests pin the text transformation itself.
"""
import re

import pytest

from libs.report import WORD_JOINER, code_span, safe_markdown

PAYLOADS = ['<img src=x onerror="alert(3)">', "<img src=x onerror=alert(3)>", "<div><img src=x onerror=alert(3)></div>",
            '<details open ontoggle="alert(3)">', "<script>alert(3)</script>", "<!-- x --><svg onload=alert(3)>",
            "<javascript:alert(3)>", "\\<div>", "<\tdiv>"]


def _tags_outside_code(markdown: str) -> list[str]:
    outside = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", " ", markdown, flags=re.S)
    return re.findall("<(?!" + WORD_JOINER + ")", outside)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("template", ["{p}", "## Grown from {p}, b", "**small model {p}** (live)", "- {p}\n- b",
                                      "| a |\n|---|\n| {p} |", "intro\n\n{p}\n\nend", "`code` {p} `code`"])
def test_no_raw_html_survives_and_the_text_still_reads_the_same(payload, template):
    text = template.format(p=payload)
    safe = safe_markdown(text)
    assert _tags_outside_code(safe) == []
    assert safe.replace(WORD_JOINER, "") == text          # the reader sees the same characters
    assert safe_markdown(safe) == safe                     # idempotent


def test_script_links_lose_their_link_syntax_and_web_links_stay():
    text = ("[a](javascript:alert(3)) [b](JavaScript:alert(3)) [c](javascript&#58;alert(3)) [d]( data:text/html,x) "
            "[e](//evil.example) [ok](https://example.org) [anchor](#top) [site](/docs)\n[ref]: javascript:alert(3)\n"
            "[web]: https://example.org\n")
    safe = safe_markdown(text)
    for label in "abcde":
        assert f"[{label}]{WORD_JOINER}(" in safe
    for kept in ("[ok](https://example.org)", "[anchor](#top)", "[site](/docs)", "\n[web]: https://example.org"):
        assert kept in safe
    assert f"\n{WORD_JOINER}[ref]: javascript:alert(3)" in safe
    assert safe_markdown(safe) == safe


def test_formatting_and_code_spans_are_kept():
    text = "## Heading\n\n**bold** _em_ R² < 0, `a<b>` and ``x`<y>`x``\n\n| h |\n|---|\n| 1 |"
    safe = safe_markdown(text)
    assert safe == text.replace("R² < 0", f"R² <{WORD_JOINER} 0")


@pytest.mark.parametrize("name", ["small_a", "a`b", "`x`", "<img src=x onerror=alert(3)>", "``", " "])
def test_code_span_shows_any_name_verbatim(name):
    span = code_span(name)
    fence = re.match("`+", span).group(0)
    inner = span[len(fence):-len(fence)]
    assert span.endswith(fence) and fence not in inner   # no backtick run inside can close the span early
    assert inner.strip(" ") == name.strip(" ") or inner == f" {name} "
    assert _tags_outside_code(safe_markdown(f"model {span}")) == []
