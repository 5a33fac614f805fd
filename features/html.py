"""HTML bodies: visible text, anchors, and the tricks spam plays with markup."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser

# Bounded patterns only: the text comes from the senders being judged, so nothing here
# may backtrack in proportion to the input.
_HIDDEN_STYLE = re.compile(
    r"display\s{0,10}:\s{0,10}none|visibility\s{0,10}:\s{0,10}hidden|font-size\s{0,10}:\s{0,10}[01](?:\.\d{1,3})?(?:px|pt)?\s{0,10}(?:;|$)",
    re.IGNORECASE,
)
_TINY_FONT_SIZE = re.compile(r"^\s{0,10}(?:0|1|-[1-9])\b")

# lexbor's tree building is quadratic in the nesting depth of block containers (20,000
# nested <div>s take half a second, 50,000 five). Deeper than MAX_BLOCK_DEPTH, the
# HTML is cut where it passes that depth; no real message nests that deep.
MAX_BLOCK_DEPTH = 1_000
_BLOCK_TAGS = (
    "div|ul|ol|li|dl|blockquote|section|center|article|pre|address|nav|main|header|footer|"
    "fieldset|figure|details|dir|menu|aside|p|h[1-6]|table|form"
)
_BLOCK_OPEN = re.compile(rf"<(?:{_BLOCK_TAGS})\b", re.IGNORECASE)
_BLOCK_TAG = re.compile(rf"<(/?)(?:{_BLOCK_TAGS})\b", re.IGNORECASE)


def bound_nesting(html: str, max_depth: int = MAX_BLOCK_DEPTH) -> str:
    """The HTML, cut where block containers nest deeper than `max_depth`."""
    if len(_BLOCK_OPEN.findall(html)) <= max_depth:  # cannot be deeper: one C-level pass
        return html
    depth = 0
    for match in _BLOCK_TAG.finditer(html):
        depth = max(0, depth - 1) if match.group(1) else depth + 1
        if depth > max_depth:
            return html[: match.start()]
    return html


@dataclass(slots=True)
class HtmlInfo:
    text: str = ""
    anchors: list[tuple[str, str]] = field(default_factory=list)  # (href, visible text)
    image_count: int = 0
    has_form: bool = False
    has_script: bool = False
    has_hidden_text: bool = False


def analyse_html(html: str) -> HtmlInfo:
    if not html.strip():
        return HtmlInfo()
    tree = LexborHTMLParser(bound_nesting(html))
    info = HtmlInfo(
        image_count=len(tree.css("img")),
        has_form=tree.css_first("form") is not None,
        has_script=tree.css_first("script") is not None,
        has_hidden_text=_has_hidden_text(tree),
    )
    for anchor in tree.css("a"):
        href = anchor.attributes.get("href")
        if href:
            info.anchors.append((href, anchor.text(deep=True, separator=" ", strip=True)))
    tree.strip_tags(["script", "style", "head", "title"])
    root = tree.body or tree.root
    info.text = root.text(separator=" ", strip=True) if root is not None else ""
    return info


def _has_hidden_text(tree: LexborHTMLParser) -> bool:
    """Text hidden by inline style (display:none, visibility:hidden, font-size 0-1) or <font size=1>."""
    for node in tree.css("[style]"):
        if _HIDDEN_STYLE.search(node.attributes.get("style") or ""):
            return True
    return any(_TINY_FONT_SIZE.match(node.attributes.get("size") or "") for node in tree.css("font[size]"))
