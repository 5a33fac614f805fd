"""The public corpora in ``../shared/data``: SpamAssassin and TREC 2007 (development part).

What this module guarantees, per the data README's leakage section:

- receiving-side headers never reach a feature: `features.message` keeps only the
  sender-controlled headers, for corpora and live traffic alike;
- duplicates are removed by normalised body hash before splitting, and a test or
  calibration message whose body was seen earlier is dropped;
- what a list server added (subject tag, footer) is removed, see `undo_list_server`;
- TREC is split by delivery order (older trains, newer tests); SpamAssassin
  (2002-2005, all older than TREC 2007) goes to training.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from features.message import ParsedMessage

SPAMASSASSIN_FOLDERS = {"easy_ham": 0, "easy_ham_2": 0, "hard_ham": 0, "spam": 1, "spam_2": 1}
TREC_ARCHIVE = "trec07p-dev.tar.xz"
TREC_DIR = "trec07p-dev"

# Shares of TREC, in delivery order.
TREC_TRAIN_END = 0.70
TREC_CALIBRATION_END = 0.80


class CorpusMissing(FileNotFoundError):
    """The shared corpora are not where the settings say."""


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    source: str  # "spamassassin" or "trec"
    name: str  # file name, unique within the source
    order: int  # delivery order within the source
    label: int  # 1 spam, 0 ham
    path: Path


def spamassassin_messages(data_dir: Path) -> list[CorpusMessage]:
    root = data_dir / "spamassassin"
    if not root.is_dir():
        raise CorpusMissing(f"SpamAssassin corpus not found at {root}")
    messages = []
    for folder, label in SPAMASSASSIN_FOLDERS.items():
        for path in sorted((root / folder).iterdir()):
            if path.is_file() and not path.name.startswith("cmds"):
                messages.append(CorpusMessage("spamassassin", f"{folder}/{path.name}", len(messages), label, path))
    return messages


def extract_once(archive: Path, cache_dir: Path, folder: str, marker: str) -> Path:
    """Extract an .tar.xz corpus into the cache unless `folder/marker` is already there; return the folder."""
    target = cache_dir / folder
    if (target / marker).is_file():
        return target
    if not archive.is_file():
        raise CorpusMissing(f"corpus archive not found at {archive}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(cache_dir, filter="data")
    return target


def ensure_trec_extracted(data_dir: Path, cache_dir: Path) -> Path:
    """Extract the TREC archive into the cache (once) and return its folder."""
    return extract_once(data_dir / TREC_ARCHIVE, cache_dir, TREC_DIR, "labels.txt")


def trec_messages(data_dir: Path, cache_dir: Path) -> list[CorpusMessage]:
    root = ensure_trec_extracted(data_dir, cache_dir)
    messages = []
    for line in (root / "labels.txt").read_text().splitlines():
        name, _, label = line.strip().partition(" ")
        if not name:
            continue
        number = int(name.rsplit(".", 1)[1])
        messages.append(CorpusMessage("trec", name, number, int(label.strip() == "spam"), root / "messages" / name))
    messages.sort(key=lambda m: m.order)
    return messages


def trec_split(order: int, total: int) -> str:
    share = order / total
    if share <= TREC_TRAIN_END:
        return "train"
    if share <= TREC_CALIBRATION_END:
        return "calibration"
    return "test"


# What a list server (Mailman, ezmlm, Listserv) adds to a message it relays: a tag in
# the subject and a footer. Both are receiving-side, like List-* headers, and would
# teach the model that "mailing list" means ham.
LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "x-mailman-version", "mailing-list", "x-ezmlm-version")
_LIST_TAG = re.compile(r"^(\s*(?:re|fwd?|aw)\s*:\s*)*\[[^\]]{1,40}\]\s*", re.IGNORECASE)
_FOOTER_RULE = re.compile(r"^[_\-=]{20,}\s*$", re.MULTILINE)
_FOOTER_MARKERS = re.compile(r"listinfo|mailing list|unsubscribe|list archives|posting guide|@lists?\.", re.IGNORECASE)


def undo_list_server(parsed: ParsedMessage) -> ParsedMessage:
    """Remove a list server's subject tag and body footer from a list-delivered message."""
    names = {name.lower() for name, _ in parsed.all_headers}
    if not names.intersection(LIST_HEADERS):
        return parsed
    match = _LIST_TAG.match(parsed.subject)
    if match and "[" in match.group(0):
        prefix = match.group(1) or ""
        parsed.subject = prefix + parsed.subject[match.end() :]
        parsed.headers = [(k, parsed.subject if k == "subject" else v) for k, v in parsed.headers]
    parsed.text = _strip_footer(parsed.text)
    parsed.html = _strip_footer(parsed.html)
    return parsed


def _strip_footer(body: str) -> str:
    rules = list(_FOOTER_RULE.finditer(body))
    for rule in reversed(rules):
        tail = body[rule.start() :]
        if len(tail) < 1500 and _FOOTER_MARKERS.search(tail):
            return body[: rule.start()].rstrip()
    return body


_WS = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")


def body_fingerprint(subject: str, visible_text: str) -> str:
    """Hash of the normalised body for exact-duplicate removal (case, spacing, digits folded)."""
    text = _DIGITS.sub("0", _WS.sub(" ", visible_text.lower())).strip()
    if len(text) < 20:  # near-empty bodies would all collide; let the subject tell them apart
        text = f"{subject.lower()}|{text}"
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def iter_corpus(data_dir: Path, cache_dir: Path) -> Iterator[tuple[CorpusMessage, str]]:
    """Every corpus message with its split, before de-duplication."""
    for message in spamassassin_messages(data_dir):
        yield message, "train"
    trec = trec_messages(data_dir, cache_dir)
    for message in trec:
        yield message, trec_split(message.order, len(trec))
