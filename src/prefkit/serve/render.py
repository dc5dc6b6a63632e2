"""Safe HTML for untrusted, model-written text in the annotation and arena pages.

Everything an annotator reads -- prompts, responses, critiques -- was written by a model or
uploaded by someone else, so it is rendered as *inert* HTML whatever it contains (Label Studio
shipped exactly this hole: CVE-2025-25296 rendered a ``label_config`` as HTML). Two independent
layers, either of which alone blocks markup injection:

1. **Markdown** (CommonMark via ``markdown-it-py``, plus tables and strikethrough) with raw HTML
   *disabled*: ``<script>`` in the text is shown as the characters ``<script>``. Links are
   accepted only with an ``http``, ``https`` or ``mailto`` URL; any other link (``javascript:``,
   ``data:``, ``vbscript:``, ``file:``, relative, scheme-less) stays plain text. Images are
   never embedded -- a remote image is a request made on the annotator's behalf (tracking,
   exfiltration) -- they are shown as text: ``alt (image: URL)``. Fenced code becomes
   ``<pre><code class="language-X">`` with ``X`` reduced to ``[A-Za-z0-9_+-]``.
2. **Sanitizer** (``nh3``, the ammonia HTML sanitizer) over the Markdown output with an explicit
   allowlist: :data:`ALLOWED_TAGS`, :data:`ALLOWED_ATTRIBUTES` (values checked again by
   :func:`url_allowed` and fixed patterns), URL schemes :data:`URL_SCHEMES`, and every link
   gets ``rel="noopener noreferrer nofollow"`` (``target`` is never set).

No ``style``, no event handlers, no images, no forms, no SVG can come out. Block nesting
(quotes, lists) is capped at :data:`MAX_NESTING` levels: a text nested deeper (e.g. 10,000
``>``) is shown as plain text rather than cut, and rendering stays fast and never recurses
deeply. NUL bytes and lone surrogates become U+FFFD.

:func:`render_text` renders a prefkit :data:`~prefkit.data.records.Text` (a string or a
conversation); :func:`render_markdown` and :func:`render_plain` render one string.
:data:`MARKDOWN` switches Markdown off for every call that does not say otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.normalize_url import normalizeLinkText
from markdown_it.common.utils import escapeHtml, unescapeAll
from markdown_it.parser_block import ParserBlock
from markupsafe import Markup, escape

from prefkit.data.records import Text

__all__ = [
    "ALLOWED_ATTRIBUTES",
    "ALLOWED_TAGS",
    "LINK_REL",
    "MARKDOWN",
    "MAX_NESTING",
    "URL_SCHEMES",
    "render_markdown",
    "render_plain",
    "render_text",
    "role_class",
    "url_allowed",
]

MARKDOWN: bool = True
"""Module default for :func:`render_text`: ``False`` renders every text as plain (escaped) text
unless a call passes ``markdown=True``."""

MAX_NESTING = 32
"""Deepest block nesting (blockquotes, list levels count twice) rendered as Markdown; deeper
texts are shown with :func:`render_plain` instead."""

ALLOWED_TAGS: frozenset[str] = frozenset({
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a",
})
"""The only elements :func:`render_markdown` can emit (no ``img``: images are shown as text)."""

ALLOWED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "title"}),  # + rel, set by the sanitizer
    "code": frozenset({"class"}),  # language-[A-Za-z0-9_+-]+ only
    "th": frozenset({"align"}),  # left / center / right only
    "td": frozenset({"align"}),
    "ol": frozenset({"start"}),  # digits only: a list that starts at 3 keeps its numbers
}
"""Attributes allowed per element; every value is checked again (see :func:`_attribute_filter`)."""

URL_SCHEMES: frozenset[str] = frozenset({"http", "https", "mailto"})
"""The only URL schemes a link may have; relative and scheme-less links are refused too."""

LINK_REL = "noopener noreferrer nofollow"

_ROLE_CLASSES = {"user": "role-user", "assistant": "role-assistant", "system": "role-system"}
_LANG_DROP = re.compile(r"[^A-Za-z0-9_+-]")
_CODE_CLASS = re.compile(r"language-[A-Za-z0-9_+-]{1,40}")
_ALIGNS = frozenset({"left", "center", "right"})
# what browsers ignore in a URL: leading/trailing C0 controls and spaces, tabs and newlines
# anywhere; we drop every C0/C1 control and space anywhere before looking at the scheme
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f-\x9f]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_BAD_CHARS = re.compile(r"[\x00\ud800-\udfff]")  # NUL and lone surrogates (not UTF-8 encodable)
_CACHE_MAX_CHARS = 65_536


def url_allowed(url: str) -> bool:
    """True when ``url`` (already entity-decoded) has one of :data:`URL_SCHEMES`.

    Whitespace and control characters anywhere are ignored first, as a browser would ignore
    them (``java\\tscript:`` is ``javascript:``); a URL without a scheme is refused.
    """
    match = _SCHEME.match(_URL_IGNORED.sub("", url))
    return match is not None and match.group(1).lower() in URL_SCHEMES


def role_class(role: Any) -> str:
    """The CSS class for a message role: ``role-user``, ``role-assistant``, ``role-system`` or,
    for anything else, ``role-other`` (the role itself never reaches a class attribute)."""
    key = role.strip().lower() if isinstance(role, str) else None
    return _ROLE_CLASSES.get(key, "role-other")


def render_markdown(text: str) -> Markup:
    """Render untrusted ``text`` as sanitized Markdown HTML (see the module docstring).

    Raw HTML in ``text`` is escaped and shown as text; the output only has
    :data:`ALLOWED_TAGS` and :data:`ALLOWED_ATTRIBUTES`. A text nested deeper than
    :data:`MAX_NESTING` block levels is rendered by :func:`render_plain` instead.
    """
    text = _clean_input(text)
    if len(text) > _CACHE_MAX_CHARS:
        return Markup(_markdown_html(text))
    return Markup(_markdown_html_cached(text))


def render_plain(text: str) -> Markup:
    """Escape ``text`` as HTML text, line breaks kept as ``<br>`` (for Markdown turned off).

    ``\\r\\n`` and ``\\r`` count as line breaks. A :class:`~markupsafe.Markup` argument is
    escaped too: the text is untrusted whatever its type says.
    """
    text = _clean_input(text).replace("\r\n", "\n").replace("\r", "\n")
    return Markup(str(escape(text)).replace("\n", "<br>"))


def render_text(text: Text | None, *, markdown: bool | None = None) -> Markup:
    """Render a prefkit ``Text``: a string, or a conversation (a list of
    ``{"role": ..., "content": ...}`` messages).

    A conversation becomes ``<div class="conversation">`` holding, in order, one
    ``<div class="message role-...">`` per message (class from :func:`role_class`) with a
    ``<div class="message-role">`` (the role name, escaped) and a
    ``<div class="message-content">``. Content given as a list of parts (OpenAI style) shows its
    ``text`` parts and a ``[type]`` placeholder for the others. ``markdown`` picks
    :func:`render_markdown` or :func:`render_plain` (``None``: the module's :data:`MARKDOWN`);
    ``None`` renders as nothing and any other object as ``str(text)``.
    """
    use_markdown = MARKDOWN if markdown is None else markdown
    render = render_markdown if use_markdown else render_plain
    if text is None:
        return Markup("")
    if isinstance(text, str):
        return render(text)
    if not isinstance(text, Sequence):
        return render(str(text))
    parts = []
    for message in text:
        if isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
        else:
            role, content = None, message
        label = "" if role is None else str(role)
        parts.append(
            Markup('<div class="message {cls}"><div class="message-role">{label}</div>'
                   '<div class="message-content">{content}</div></div>').format(
                cls=role_class(role), label=label, content=render(_content_text(content)))
        )
    return Markup('<div class="conversation">\n{}\n</div>').format(Markup("\n").join(parts))


# -- internals -------------------------------------------------------------------------------


def _clean_input(text: Any) -> str:
    """An exact ``str`` (not :class:`~markupsafe.Markup`) without NUL bytes or lone surrogates."""
    # str() of a str subclass (Markup included) is an exact str: the "safe" mark is dropped
    text = "" if text is None else str(text)
    return _BAD_CHARS.sub("\ufffd", text)


def _content_text(content: Any) -> str:
    """A message's content as one string (OpenAI-style part lists flattened)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        pieces = []
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text" or ("text" in part and "type" not in part):
                    pieces.append(str(part.get("text", "")))
                else:
                    pieces.append(f"[{part.get('type', 'part')}]")
            else:
                pieces.append(str(part))
        return "\n\n".join(pieces)
    return str(content)


class _CappedParserBlock(ParserBlock):
    """markdown-it's block parser, noting in ``env`` when ``maxNesting`` cut a text (it drops
    the rest of a too-deep block silently; we would rather show the text plainly)."""

    def tokenize(self, state: Any, startLine: int, endLine: int) -> None:  # noqa: N803
        if state.level >= state.md.options.maxNesting and startLine < endLine:
            state.env["nesting_capped"] = True
            state.line = endLine
            return
        super().tokenize(state, startLine, endLine)


def _rewrite_tokens(state: Any) -> None:
    """Core rule: table alignment as ``align`` (not ``style``), strikethrough as ``<del>``."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open"):
            style = str(token.attrs.get("style", ""))
            token.attrs = {}
            align = style.removeprefix("text-align:")
            if align in _ALIGNS:
                token.attrs["align"] = align
        elif token.type == "inline" and token.children:
            for child in token.children:
                if child.type in ("s_open", "s_close"):
                    child.tag = "del"


def _render_fence(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    info = unescapeAll(token.info).strip() if token.info else ""
    lang = _LANG_DROP.sub("", info.split(maxsplit=1)[0])[:40] if info else ""
    cls = f' class="language-{lang}"' if lang else ""
    return f"<pre><code{cls}>{escapeHtml(token.content)}</code></pre>\n"


def _render_image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    src = normalizeLinkText(str(token.attrs.get("src", "")))
    shown = f"{alt} (image: {src})" if alt else f"(image: {src})"
    return escapeHtml(shown)


def _build_markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {
        "html": False, "linkify": False, "typographer": False, "xhtmlOut": False,
        "breaks": False, "maxNesting": MAX_NESTING,
    })
    md.disable(["html_block", "html_inline"])  # already off with html=False; twice is cheap
    md.enable(["table", "strikethrough"])
    md.validateLink = url_allowed  # type: ignore[method-assign]
    capped = _CappedParserBlock()
    capped.ruler = md.block.ruler
    md.block = capped
    md.core.ruler.push("prefkit_safe_tokens", _rewrite_tokens)
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("image", _render_image)
    return md


_MD = _build_markdown()


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    """Second check of every attribute value nh3 keeps (``None`` drops the attribute)."""
    if attribute == "href":
        return value if tag == "a" and url_allowed(value) else None
    if attribute == "title":
        return value if tag == "a" else None
    if attribute == "rel":  # added by nh3 itself (link_rel), then passed through this filter
        return LINK_REL if tag == "a" else None
    if attribute == "class":
        return value if tag == "code" and _CODE_CLASS.fullmatch(value) else None
    if attribute == "align":
        return value if tag in ("th", "td") and value in _ALIGNS else None
    if attribute == "start":
        return value if tag == "ol" and value.isdigit() and len(value) <= 9 else None
    return None


def _sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_attribute_filter,
        strip_comments=True,
        link_rel=LINK_REL,
        url_schemes=set(URL_SCHEMES),
    )


def _markdown_html(text: str) -> str:
    env: dict[str, Any] = {}
    html = _MD.render(text, env)
    if env.get("nesting_capped"):
        return str(render_plain(text))
    return _sanitize(html)


@lru_cache(maxsize=512)
def _markdown_html_cached(text: str) -> str:
    return _markdown_html(text)
