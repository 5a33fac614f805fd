"""A private clamd for tests and benchmarks: its own config, socket and signature database, no download.

Debian's `clamav-daemon` provides the binary; the signatures are written here:

- `EICAR_SIGNATURE`: the EICAR test file, by its MD5 and size (an `.hdb` line), so the
  standard anti-virus test string is found without ClamAV's official database;
- `TROJAN_SIGNATURE`: a body signature (an `.ndb` hex pattern, any file type) matching
  `TROJAN_MARKER` anywhere in a file, standing in for a real trojan's bytes.

clamd appends `.UNOFFICIAL` to signatures from databases it did not get from ClamAV, so
it reports them as `Eicar-Test-Signature.Outguard.UNOFFICIAL` and
`Win.Trojan.OutguardTest.UNOFFICIAL`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The EICAR anti-virus test file (eicar.org): 68 printable bytes every scanner detects.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Eicar-Test-Signature.Outguard"
TROJAN_MARKER = b"OUTGUARD-TEST-TROJAN-7c1e9a5d"
TROJAN_SIGNATURE = "Win.Trojan.OutguardTest"


def clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if os.access(p, os.X_OK)), None)


def write_signatures(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "outguard-test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:{EICAR_SIGNATURE}\n")
    (directory / "outguard-test.ndb").write_text(f"{TROJAN_SIGNATURE}:0:*:{TROJAN_MARKER.hex()}\n")


@dataclass
class PrivateClamd:
    """A running clamd; `spec` is what OUTGUARD_CLAMD takes."""

    directory: Path
    process: subprocess.Popen[bytes] | None

    @property
    def socket(self) -> Path:
        return self.directory / "clamd.sock"

    @property
    def spec(self) -> str:
        return f"unix:{self.socket}"

    def log(self) -> str:
        path = self.directory / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop it (its socket goes with it): clamd is down."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def start(self, timeout_s: float = 30.0) -> None:
        binary = clamd_binary()
        if binary is None:
            raise FileNotFoundError("clamd is not installed (Debian: apt-get install clamav-daemon)")
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [binary, "--config-file", str(self.directory / "clamd.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"clamd did not start:\n{self.log()[-2000:]}")
            time.sleep(0.02)


@contextlib.contextmanager
def private_clamd(stream_max_bytes: int = 25 * 1024 * 1024, threads: int = 4) -> Iterator[PrivateClamd]:
    """Start clamd on a unix socket in a new temporary folder (short: a socket path is at most 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="og-clamd-"))
    try:
        write_signatures(directory / "db")
        (directory / "clamd.conf").write_text(
            "\n".join(
                [
                    f"LocalSocket {directory / 'clamd.sock'}",
                    "LocalSocketMode 600",
                    "Foreground yes",
                    f"DatabaseDirectory {directory / 'db'}",
                    f"TemporaryDirectory {directory}",
                    f"LogFile {directory / 'clamd.log'}",
                    f"StreamMaxLength {stream_max_bytes}",
                    f"MaxThreads {threads}",
                    "SelfCheck 0",
                    "",
                ]
            )
        )
        clamd = PrivateClamd(directory, None)
        clamd.start()
        try:
            yield clamd
        finally:
            clamd.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
