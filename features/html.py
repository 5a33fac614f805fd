"""HTML bodies: visible text, anchors, and the tricks spam plays with markup."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser

_HIDDEN_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01](?:\.\d+)?(?:px|pt)?\s*[;\"']",
    re.IGNORECASE,
)
_TINY_FONT_TAG = re.compile(r"<font[^>]+size\s*=\s*[\"']?(?:0|1|-[1-9])\b", re.IGNORECASE)


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
    tree = LexborHTMLParser(html)
    info = HtmlInfo(
        image_count=len(tree.css("img")),
        has_form=tree.css_first("form") is not None,
        has_script=tree.css_first("script") is not None,
        has_hidden_text=bool(_HIDDEN_STYLE.search(html) or _TINY_FONT_TAG.search(html)),
    )
    for anchor in tree.css("a"):
        href = anchor.attributes.get("href")
        if href:
            info.anchors.append((href, anchor.text(deep=True, separator=" ", strip=True)))
    tree.strip_tags(["script", "style", "head", "title"])
    root = tree.body or tree.root
    info.text = root.text(separator=" ", strip=True) if root is not None else ""
    return info
