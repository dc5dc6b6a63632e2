"""prefkit.serve.render: untrusted model text comes out as inert HTML, whatever it holds.

The safety checks parse the output with :mod:`html.parser` (not regexes) and hold it to the
allowlist; the positive checks make sure ordinary Markdown still reads well.
"""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from markupsafe import Markup

from prefkit.serve import render
from prefkit.serve.render import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    LINK_REL,
    render_markdown,
    render_plain,
    render_text,
)
from xss_corpus import HOSTILE_TEXTS

# the conversation wrappers render_text adds around rendered content (fixed class names only)
WRAPPER_CLASSES = {"conversation", "message-role", "message-content"} | {
    f"message role-{r}" for r in ("user", "assistant", "system", "other")
}
CODE_CLASS = re.compile(r"language-[A-Za-z0-9_+-]+")
URL_IGNORED = re.compile(r"[\x00-\x20\x7f-\x9f]")


class Collect(HTMLParser):
    """Every element (with its attributes) and all text of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.other: list[str] = []  # comments, declarations, processing instructions

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def handle_comment(self, data):
        self.other.append(f"comment {data!r}")

    def handle_decl(self, decl):
        self.other.append(f"decl {decl!r}")

    def unknown_decl(self, data):
        self.other.append(f"decl {data!r}")

    def handle_pi(self, data):
        self.other.append(f"pi {data!r}")


def parse(html: str) -> Collect:
    parser = Collect()
    parser.feed(html)
    parser.close()
    return parser


def assert_inert(html: str, *, wrappers: bool = False) -> None:
    """The safety contract: allowlisted elements and attributes only, safe URL schemes only."""
    assert isinstance(html, Markup)
    lowered = html.lower()
    for needle in ("<script", "<iframe", "<svg", "<img", "<style", "<object", "<embed"):
        assert needle not in lowered, needle
    parsed = parse(html)
    assert parsed.other == []
    for tag, attrs in parsed.elements:
        if wrappers and tag == "div":
            assert set(attrs) == {"class"} and attrs["class"] in WRAPPER_CLASSES, attrs
            continue
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), name
            assert name != "style"
            allowed = ALLOWED_ATTRIBUTES.get(tag, frozenset()) | ({"rel"} if tag == "a" else set())
            assert name in allowed, (tag, name)
            if name == "href":
                scheme = urlsplit(URL_IGNORED.sub("", value or "")).scheme.lower()
                assert scheme in {"http", "https", "mailto"}, value
            if name == "rel":
                assert value == LINK_REL
            if name == "class":
                assert CODE_CLASS.fullmatch(value or ""), value
            if name == "align":
                assert value in {"left", "center", "right"}
            if name == "start":
                assert (value or "").isdigit()
        assert "target" not in attrs


def test_the_corpus_is_big_enough():
    assert len(HOSTILE_TEXTS) >= 40
    assert all(isinstance(t, str) for t in HOSTILE_TEXTS)


HOSTILE_IDS = [f"h{i:03d}" for i, _ in enumerate(HOSTILE_TEXTS)]


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=HOSTILE_IDS)
def test_hostile_text_renders_inert(text):
    assert_inert(render_markdown(text))
    assert_inert(render_plain(text))
    conversation = [{"role": text[:200], "content": text}, {"role": "assistant", "content": text}]
    assert_inert(render_text(conversation), wrappers=True)
    assert_inert(render_text(conversation, markdown=False), wrappers=True)


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=HOSTILE_IDS)
def test_sanitizer_layer_alone_is_inert(text):
    # the second layer must hold even if the Markdown layer let raw HTML through
    assert_inert(Markup(render._sanitize(render._clean_input(text))))


def test_hostile_markup_is_shown_as_text():
    html = render_markdown("Look: <script>alert(1)</script> <img src=x onerror=alert(1)>")
    text = "".join(parse(html).text)
    assert "<script>alert(1)</script>" in text
    assert "<img src=x onerror=alert(1)>" in text


@pytest.mark.parametrize("link", [
    "[x](javascript:alert(1))", "[x](JaVaScRiPt:alert(1))", "[x](&#106;avascript:alert(1))",
    "[x]( javascript:alert(1) )", "<javascript:alert(1)>", "[x][r]\n\n[r]: javascript:alert(1)",
    "[x](data:text/html,hi)", "[x](vbscript:msgbox(1))", "[x](file:///etc/passwd)",
    "[x](/relative)", "[x](//evil.example/)", "[x](ftp://host/file)",
])
def test_unsafe_links_become_plain_text(link):
    parsed = parse(render_markdown(link))
    assert [tag for tag, _ in parsed.elements if tag == "a"] == []
    assert "x" in "".join(parsed.text) or "javascript" in "".join(parsed.text)


def test_https_link_keeps_href_and_gets_rel():
    parsed = parse(render_markdown('See [the docs](https://example.com/a?b=1&c=2 "Docs").'))
    links = [attrs for tag, attrs in parsed.elements if tag == "a"]
    assert links == [{"href": "https://example.com/a?b=1&c=2", "title": "Docs", "rel": LINK_REL}]
    autolinks = parse(render_markdown("<https://example.com> <me@example.com>")).elements
    hrefs = [a["href"] for t, a in autolinks if t == "a"]
    assert hrefs == ["https://example.com", "mailto:me@example.com"]


def test_images_are_shown_as_text_not_loaded():
    html = render_markdown("![a cat](https://example.com/cat.png)")
    assert "<img" not in html
    assert "".join(parse(html).text).strip() == "a cat (image: https://example.com/cat.png)"


def test_fenced_code_is_verbatim():
    code = "if a < b and c > d:\n    print('<script>&amp;</script>')  # {{7*7}}\n"
    parsed = parse(render_markdown(f"```python\n{code}```"))
    assert [tag for tag, _ in parsed.elements] == ["pre", "code"]
    assert parsed.elements[1][1] == {"class": "language-python"}
    assert "".join(parsed.text) == code + "\n"  # (+ the newline after </pre>)


def test_fence_language_is_sanitized():
    parsed = parse(render_markdown('```c++"><script>x\nint a;\n```\n\n```"onclick=1\nb\n```'))
    classes = [attrs.get("class") for tag, attrs in parsed.elements if tag == "code"]
    assert classes == ["language-c++scriptx", "language-onclick1"]


def test_table_and_strikethrough_render():
    parsed = parse(render_markdown("| a | b |\n|:--|--:|\n| 1 | ~~2~~ |"))
    tags = [tag for tag, _ in parsed.elements]
    assert tags == ["table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td", "del"]
    aligns = [a.get("align") for t, a in parsed.elements if t in ("th", "td")]
    assert aligns == ["left", "right"] * 2


def test_markdown_basics_survive():
    parsed = parse(render_markdown("# T\n\n**b** *i* `c`\n\n> q\n\n3. x\n4. y\n\n---"))
    tags = [tag for tag, _ in parsed.elements]
    assert tags == ["h1", "p", "strong", "em", "code", "blockquote", "p", "ol", "li", "li", "hr"]
    assert ("ol", {"start": "3"}) in parsed.elements


def test_template_syntax_shows_literally():
    for text in ("{{7*7}}", "{% raw %}{{ x }}{% endraw %}", "${7*7}"):
        out = "".join(parse(render_markdown(text)).text)
        assert out.strip() == text
        assert "49" not in out


def test_conversation_shows_roles_in_order():
    html = render_text([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi *there*"},
        {"role": "assistant", "content": "Hello."},
        {"role": 'tool" onclick="x', "content": "out"},
    ])
    parsed = parse(html)
    classes = [a["class"] for t, a in parsed.elements if t == "div" and "message " in a["class"]]
    assert classes == ["message role-system", "message role-user", "message role-assistant",
                       "message role-other"]
    assert [t.strip() for t in parsed.text if t.strip()] == [
        "system", "Be brief.", "user", "Hi", "there", "assistant", "Hello.", 'tool" onclick="x',
        "out"]
    assert_inert(html, wrappers=True)


def test_conversation_content_parts_and_odd_messages():
    html = render_text([{"role": "user", "content": [{"type": "text", "text": "look"},
                                                     {"type": "image_url", "image_url": "x"}]},
                        "a bare string", {"content": None}])
    text = "".join(parse(html).text)
    assert "look" in text and "[image_url]" in text and "a bare string" in text
    assert render_text(None) == ""


def test_plain_keeps_line_breaks_and_escapes():
    assert render_plain("a <b>\r\nc\rd\n") == "a &lt;b&gt;<br>c<br>d<br>"
    assert render_plain(Markup("<b>trusted?</b>")) == "&lt;b&gt;trusted?&lt;/b&gt;"
    assert render_markdown(Markup("<b>x</b>")).count("<b>") == 0


def test_markdown_can_be_switched_off(monkeypatch):
    assert render_text("**x**") == render_markdown("**x**")
    assert render_text("**x**", markdown=False) == "**x**"
    monkeypatch.setattr(render, "MARKDOWN", False)
    assert render_text("**x**") == "**x**"
    assert render_text("**x**", markdown=True) == render_markdown("**x**")


def test_nul_and_lone_surrogates_do_not_break_rendering():
    for fn in (render_markdown, render_plain):
        out = fn("a\x00b\ud800c")
        assert "\x00" not in out and "\ud800" not in out
        out.encode("utf-8")


@pytest.mark.parametrize("text", [">" * 10_000 + " end", "- " * 10_000 + "end",
                                  "> - " * 5_000 + "end", "[" * 20_000 + "end"])
def test_deep_nesting_is_fast_and_keeps_the_text(text):
    start = time.perf_counter()
    html = render_markdown(text + "\x00")  # (a NUL keeps the result out of the cache)
    assert time.perf_counter() - start < 2.0
    assert "end" in "".join(parse(html).text)
    assert_inert(html)


def test_moderate_nesting_still_renders_as_markdown():
    html = render_markdown("> " * 10 + "deep")
    assert [t for t, _ in parse(html).elements].count("blockquote") == 10
