"""Import known spam into the signature database from mail files (`outguard signatures import`).

A path may be an mbox file, a Maildir, a folder of one-message files (walked
recursively, as the public corpora and most spam traps store them) or one message.
Each message is fingerprinted exactly as scoring does and added with the source
`corpus`; content already held refreshes its entry instead of adding a second one.
"""

from __future__ import annotations

import mailbox
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from features.content import content_features
from features.message import parse_raw
from service.fingerprints.service import FingerprintService
from service.fingerprints.signatures import SignatureAdd


class NotMail(ValueError):
    """A path that is neither a message, an mbox, a Maildir nor a folder of messages."""


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def messages_in(paths: Iterable[Path]) -> Iterator[bytes]:
    """Every message under `paths`, as raw bytes, in a stable order."""
    for path in paths:
        if not path.exists():
            raise NotMail(f"{path}: no such file or folder")
        if path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir():
            maildir = mailbox.Maildir(path, factory=None, create=False)
            for key in sorted(maildir.keys()):
                yield maildir.get_bytes(key)
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if not name.startswith("."):
                        yield from messages_in([Path(root) / name])
        elif _is_mbox(path):
            box = mailbox.mbox(path, factory=None, create=False)
            for key in box.iterkeys():
                yield box.get_bytes(key)
        else:
            yield path.read_bytes()


@dataclass(slots=True)
class ImportResult:
    read: int = 0
    added: int = 0
    refreshed: int = 0
    too_short: int = 0  # fewer words than a fingerprint needs


async def import_messages(
    service: FingerprintService,
    messages: Iterable[bytes],
    *,
    actor: str,
    at: float,
    note: str | None = None,
    on_message: Callable[[ImportResult], None] | None = None,
    batch: int = 500,
) -> ImportResult:
    """Fingerprint and add every message, `batch` signatures to a commit."""
    result = ImportResult()
    pending: list[SignatureAdd] = []

    async def flush() -> None:
        for _, created in await service.add_many(pending):
            result.added += created
            result.refreshed += not created
        pending.clear()

    for raw in messages:
        result.read += 1
        fingerprint = service.fingerprinter.fingerprint(content_features(parse_raw(raw)).document)
        if fingerprint is None:
            result.too_short += 1
        else:
            pending.append(SignatureAdd(fingerprint, "corpus", actor, at, note=note))
            if len(pending) >= batch:
                await flush()
        if on_message is not None:
            on_message(result)
    await flush()
    return result
