"""modern-train: present-day mail (2023-2026), made fit to learn from.

The archive's README lists its traps; each is undone here, once, for training, the
evaluation and the simulator alike (`modern_message`):

- **One program rendered all ham.** Each ham message is sent again in the shape of a
  real mailer library (`training.mailers`), drawn per message, so no MIME shape,
  boundary or Message-ID pattern goes with the label.
- **A recipient placeholder.** phishing_pot replaced every recipient with
  `phishing@pot`; it becomes an ordinary mailbox address, as in the ham.
- **A small cast.** Thirty invented businesses and ~1,000 name combinations recur
  through the ham; the sender's organisation name and domain and the recipient's name
  are replaced per message by made-up ones, so the text model cannot learn "Brightwater
  Coffee means ham".
- **List-* and DKIM** exist only on one side; neither is a model feature
  (`features.message.SENDER_HEADERS` does not read them).

Groups for evaluation: ham by `source_repo` (whole projects held out) and, within
one, by `source_path` (a template's fills are near-copies); spam by file.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from email.utils import getaddresses, parseaddr
from pathlib import Path

import numpy as np
import pandas as pd

from features.message import ParsedMessage, parse_raw
from training.corpora import extract_once
from training.mailers import MAILERS, reshape

MODERN_ARCHIVE = "modern-train.tar.xz"
MODERN_DIR = "modern-train"
PLACEHOLDER = re.compile(r"phishing@pot\b", re.IGNORECASE)
MAILBOXES = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "web.de", "orange.fr", "hotmail.co.uk", "aol.com")
_SYLLABLES = [
    "ka",
    "ro",
    "mi",
    "ten",
    "vel",
    "dor",
    "an",
    "is",
    "ul",
    "bra",
    "sen",
    "tor",
    "lin",
    "mar",
    "qu",
    "ev",
    "os",
    "ri",
    "da",
    "fen",
    "gal",
    "hol",
    "jor",
    "ny",
    "pe",
    "sa",
    "tu",
    "wi",
    "xe",
    "zo",
    "bel",
    "cor",
    "dun",
    "ers",
    "fal",
    "gra",
    "hel",
    "ion",
    "kal",
    "lum",
    "mor",
    "nor",
    "pal",
    "rud",
    "sol",
    "tam",
    "urs",
    "vin",
    "wol",
    "yar",
    "zen",
]


def ensure_modern_extracted(data_dir: Path, cache_dir: Path) -> Path:
    """Extract the archive into the cache (once) and return its folder."""
    return extract_once(data_dir / MODERN_ARCHIVE, cache_dir, MODERN_DIR, "manifest.tsv")


def load_manifest(root: Path) -> pd.DataFrame:
    """One row per message: file, label (1 spam), source_repo, source_path, category, group."""
    manifest = pd.read_csv(root / "manifest.tsv", sep="\t", dtype=str, keep_default_na=False)
    manifest["label"] = (manifest["label"] == "spam").astype(int)
    # The unit a fill must not cross: a template for ham, the message itself for spam.
    manifest["template"] = np.where(manifest["label"] == 0, manifest["source_repo"] + ":" + manifest["source_path"], "")
    manifest.loc[manifest["label"] == 1, "template"] = manifest["file"]
    return manifest


def _seed(*parts: str) -> int:
    return zlib.crc32("\x1f".join(parts).encode())


def made_up_name(rng: np.random.Generator, syllables: int = 3) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), syllables)).capitalize()


def made_up_address(rng: np.random.Generator) -> str:
    return f"{made_up_name(rng, 2).lower()}.{made_up_name(rng, 3).lower()}@{MAILBOXES[int(rng.integers(0, 8))]}"


@dataclass(frozen=True, slots=True)
class _Swap:
    old: str
    new: str


def _swaps(parsed: ParsedMessage, rng: np.random.Generator) -> list[_Swap]:
    """The sender's organisation and domain and the recipient's names, each to a made-up one."""
    swaps: list[_Swap] = []
    name, address = parseaddr(parsed.header("from") or "")
    domain = address.rpartition("@")[2].lower()
    if domain:
        label = domain.split(".")[0]
        new_label = made_up_name(rng, 3).lower()
        swaps.append(_Swap(domain, f"{new_label}.{domain.split('.', 1)[1] if '.' in domain else 'com'}"))
        swaps.append(_Swap(label, new_label))
    if name and len(name) >= 4:
        swaps.append(_Swap(name, f"{made_up_name(rng)} {made_up_name(rng, 2)}"))
    for display, _ in getaddresses(parsed.header_values("to")):
        for word in display.split():
            if len(word) >= 3 and word.isalpha():
                swaps.append(_Swap(word, made_up_name(rng, 2)))
    return sorted(swaps, key=lambda s: -len(s.old))


def _apply(text: str, swaps: list[_Swap]) -> str:
    for swap in swaps:
        text = re.sub(rf"(?<!\w){re.escape(swap.old)}(?!\w)", swap.new, text, flags=re.IGNORECASE)
    return text


def neutralise(parsed: ParsedMessage, label: int, rng: np.random.Generator) -> ParsedMessage:
    """Undo the corpus build's artefacts (see the module docstring), in place."""
    if label == 1:  # spam: only the recipient placeholder
        address = made_up_address(rng)

        def fix(value: str) -> str:
            return PLACEHOLDER.sub(address, value)

    else:  # ham: the sender's and recipient's names
        swaps = _swaps(parsed, rng)

        def fix(value: str) -> str:
            return _apply(value, swaps)

    parsed.headers = [(k, fix(v)) for k, v in parsed.headers]
    parsed.all_headers = [(k, fix(v)) for k, v in parsed.all_headers]
    parsed.subject = fix(parsed.subject)
    parsed.text = fix(parsed.text)
    parsed.html = fix(parsed.html)
    return parsed


def modern_message(root: Path, file: str, label: int, salt: str = "") -> bytes:
    """The message as the model should meet it: artefacts undone; ham sent by a real mailer's shape.

    Deterministic in (file, salt): the simulator passes the sending account as salt, so one
    shop sends all its mail through one mailer, as a real shop does.
    """
    raw = (root / file).read_bytes()
    rng = np.random.default_rng(_seed(file, salt))
    parsed = neutralise(parse_raw(raw), label, rng)
    if label == 1:
        if not PLACEHOLDER.search(raw.decode("latin-1")):
            return raw
        return PLACEHOLDER.sub(made_up_address(rng), raw.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )
    mailer = MAILERS[_seed(salt or file, "mailer") % len(MAILERS)]
    return reshape(parsed, mailer, rng)


def modern_parsed(root: Path, file: str, label: int, salt: str = "") -> ParsedMessage:
    """`modern_message`, parsed; spam is neutralised after decoding, so base64 bodies lose the placeholder too."""
    if label == 1:
        raw = (root / file).read_bytes()
        return neutralise(parse_raw(raw), 1, np.random.default_rng(_seed(file, salt)))
    return parse_raw(modern_message(root, file, label, salt))


EVAL_TEMPLATE_SHARE = 0.25


def template_pools(manifest: pd.DataFrame) -> dict[str, str]:
    """template -> "eval" or "train": the templates the shipped model never trains on.

    Ham: per source project, the first quarter of its templates by a stable hash (at
    least one), so every project has templates held out for the simulator's evaluation
    seed and the suite's template-sender tests. Spam: a quarter of the files, by hash.
    """
    pools: dict[str, str] = {}
    for (label, _repo), part in manifest.groupby(["label", "source_repo"]):
        templates = sorted(set(part["template"]), key=lambda t: _seed(t, "pool"))
        if label == 0:
            held = max(1, round(len(templates) * EVAL_TEMPLATE_SHARE))
            pools.update({t: ("eval" if i < held else "train") for i, t in enumerate(templates)})
        else:
            pools.update(
                {t: ("eval" if _seed(t, "pool") % 100 < EVAL_TEMPLATE_SHARE * 100 else "train") for t in templates}
            )
    return pools
