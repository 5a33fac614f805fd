"""The edits a spam run makes between copies: a greeting name, a hash-busting token,
tracking links, order numbers.

Used to measure fingerprints (`training.fingerprint_eval`) and to make the
simulator's campaign send varied copies of one message instead of identical ones.
"""

from __future__ import annotations

import email
import email.policy
import re
import string

import numpy as np

NAMES = ("Anna", "Brian", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lucia")
_URL = re.compile(r"(https?://)([^/\s\"'<>]+)([^\s\"'<>]*)", re.IGNORECASE)
_NUMBER = re.compile(r"\b\d{2,}\b")
_ALPHANUMERIC = np.array(list(string.ascii_letters + string.digits))
_DIGITS = np.array(list(string.digits))


def _token(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(_ALPHANUMERIC, size=length))


def mutate_text(text: str, rng: np.random.Generator) -> str:
    """One copy of a spam run: same message, the details that vary per recipient changed."""

    def tracking(match: re.Match[str]) -> str:
        host = match.group(2)
        parts = host.split(".")
        if len(parts) > 2:
            parts[0] = _token(rng, 6).lower()
        return f"{match.group(1)}{'.'.join(parts)}/{_token(rng, 10)}?r={_token(rng, 16)}"

    text = _URL.sub(tracking, text)
    text = _NUMBER.sub(lambda m: "".join(rng.choice(_DIGITS, size=len(m.group(0)))), text)
    lines = text.split("\n")
    lines.insert(int(rng.integers(0, len(lines) + 1)), _token(rng, int(rng.integers(8, 20))))
    greeting = f"{('Hi', 'Hello', 'Dear')[int(rng.integers(0, 3))]} {NAMES[int(rng.integers(0, len(NAMES)))]},"
    return greeting + "\n" + "\n".join(lines)


def mutate_raw(raw: bytes, rng: np.random.Generator) -> bytes:
    """`mutate_text` applied to every text part of a raw message, re-encoded as the part was."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "us-ascii"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("latin-1")
            charset = "latin-1"
        mutated = mutate_text(text, rng)
        del part["Content-Transfer-Encoding"]
        part.set_payload(mutated, charset="utf-8")
    return message.as_bytes()
