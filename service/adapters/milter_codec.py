"""The milter wire format (Sendmail 8 mail filter protocol, version 6): packets in, packets out.

No I/O here: bytes to values and values to bytes, so the codec is tested on the byte
sequences Postfix's `milter8.c` and Sendmail's `libmilter` send.

A packet is a 32-bit big-endian length (of what follows), one command byte, then the
command's data: NUL-terminated strings, 32-bit big-endian integers, a 16-bit port.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

PROTOCOL_VERSION = 6

# MTA -> filter commands (SMFIC_*)
ABORT = b"A"
BODY = b"B"
CONNECT = b"C"
MACRO = b"D"
BODYEOB = b"E"
HELO = b"H"
HEADER = b"L"
MAIL = b"M"
EOH = b"N"
OPTNEG = b"O"
QUIT = b"Q"
RCPT = b"R"
DATA = b"T"
UNKNOWN = b"U"
QUIT_NC = b"K"

# filter -> MTA replies (SMFIR_*)
ACCEPT = b"a"
CONTINUE = b"c"
REJECT = b"r"
TEMPFAIL = b"t"
REPLYCODE = b"y"
ADDHEADER = b"h"
CHGHEADER = b"m"
QUARANTINE = b"q"
SKIP = b"s"
PROGRESS = b"p"

# Actions the filter may take at end of message (SMFIF_*)
F_ADDHDRS = 0x01
F_CHGBODY = 0x02
F_ADDRCPT = 0x04
F_DELRCPT = 0x08
F_CHGHDRS = 0x10
F_QUARANTINE = 0x20
F_CHGFROM = 0x40
F_ADDRCPT_PAR = 0x80
F_SETSYMLIST = 0x100

# Protocol steps: events the filter does not want (NO*), replies it will not send (NR_*)
P_NOCONNECT = 0x1
P_NOHELO = 0x2
P_NOMAIL = 0x4
P_NORCPT = 0x8
P_NOBODY = 0x10
P_NOHDRS = 0x20
P_NOEOH = 0x40
P_NR_HDR = 0x80
P_NOUNKNOWN = 0x100
P_NODATA = 0x200
P_SKIP = 0x400  # the MTA understands SMFIR_SKIP
P_RCPT_REJ = 0x800
P_NR_CONN = 0x1000
P_NR_HELO = 0x2000
P_NR_MAIL = 0x4000
P_NR_RCPT = 0x8000
P_NR_DATA = 0x10000
P_NR_UNKN = 0x20000
P_NR_EOH = 0x40000
P_NR_BODY = 0x80000
P_HDR_LEADSPC = 0x100000

# Macro stages (SMFIM_*), for the macro lists a filter asks for at negotiation
M_CONNECT = 0
M_HELO = 1
M_ENVFROM = 2
M_ENVRCPT = 3
M_DATA = 4
M_EOM = 5
M_EOH = 6

# Address families in CONNECT
FAMILY_INET = "4"
FAMILY_INET6 = "6"
FAMILY_UNIX = "L"
FAMILY_UNKNOWN = "U"

CHUNK = 65535  # the largest body chunk an MTA sends without negotiating bigger ones
_LENGTH = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")


class MilterProtocolError(ValueError):
    """The peer sent something the protocol does not allow; the connection cannot go on."""


@dataclass(frozen=True, slots=True)
class Negotiation:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str
    port: int | None
    address: str | None


def encode(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length, command, data."""
    return _LENGTH.pack(len(data) + 1) + command + data


def packet_length(header: bytes) -> int:
    """The length field of a packet (command and data), from its first four bytes."""
    (length,) = _LENGTH.unpack(header)
    if length < 1:
        raise MilterProtocolError(f"packet length {length}: a packet has at least its command byte")
    return length


def text(value: bytes) -> str:
    """Protocol text as str: UTF-8 where it is, anything else replaced (never an exception)."""
    return value.decode("utf-8", "replace")


def cstrings(data: bytes) -> list[bytes]:
    """NUL-terminated strings, in order; the data must end with a NUL."""
    if not data:
        return []
    if not data.endswith(b"\0"):
        raise MilterProtocolError("a string argument is not NUL-terminated")
    return data[:-1].split(b"\0")


def cstring(value: str | bytes) -> bytes:
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    if b"\0" in raw:
        raise ValueError("a milter string cannot hold NUL")
    return raw + b"\0"


# -- MTA -> filter


def parse_optneg(data: bytes) -> Negotiation:
    if len(data) < _OPTNEG.size:
        raise MilterProtocolError(f"OPTNEG carries {len(data)} bytes, not the 12 of version, actions, protocol")
    return Negotiation(*_OPTNEG.unpack_from(data))


def parse_macros(data: bytes) -> tuple[bytes, dict[str, str]]:
    """The command the macros are for, and name -> value (braces dropped: `{auth_authen}` is `auth_authen`)."""
    if not data:
        raise MilterProtocolError("MACRO without the command it is for")
    stage, strings = data[:1], cstrings(data[1:])
    if len(strings) % 2:
        strings = strings[:-1]  # a name without a value (seen from old MTAs): ignored
    names, values = strings[0::2], strings[1::2]
    return stage, {text(n).strip("{}"): text(v) for n, v in zip(names, values, strict=True)}


def parse_connect(data: bytes) -> Connect:
    """Host name, family, then (for 4, 6 and L) the port and the address."""
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise MilterProtocolError("CONNECT without a host name and family")
    hostname, family = text(data[:end]), chr(data[end + 1])
    rest = data[end + 2 :]
    if family == FAMILY_UNKNOWN or not rest:
        return Connect(hostname, family, None, None)
    if len(rest) < 3:
        raise MilterProtocolError("CONNECT address too short")
    (port,) = struct.unpack_from(">H", rest)
    [address] = cstrings(rest[2:]) or [b""]
    return Connect(hostname, family, port, text(address))


def parse_header(data: bytes) -> tuple[bytes, bytes]:
    """A header's name and value, as bytes (the message is rebuilt from them exactly)."""
    strings = cstrings(data)
    if len(strings) != 2:
        raise MilterProtocolError(f"HEADER carries {len(strings)} strings, not a name and a value")
    return strings[0], strings[1]


def parse_args(data: bytes) -> list[str]:
    """MAIL and RCPT: the address (`<alice@example.net>`), then ESMTP arguments."""
    strings = cstrings(data)
    if not strings:
        raise MilterProtocolError("MAIL or RCPT without an address")
    return [text(s) for s in strings]


# -- filter -> MTA


def optneg_reply(version: int, actions: int, protocol: int, macros: dict[int, Iterable[str]] | None = None) -> bytes:
    """The filter's side of the negotiation; `macros` (stage -> names) only where the MTA offered SETSYMLIST."""
    data = _OPTNEG.pack(version, actions, protocol)
    for stage, names in (macros or {}).items():
        data += _LENGTH.pack(stage) + cstring(" ".join(names))
    return encode(OPTNEG, data)


def reply_code(line: str) -> bytes:
    """SMFIR_REPLYCODE: `550 5.7.1 text`. A `%` is doubled (both MTAs read the text as a format)."""
    return encode(REPLYCODE, cstring(line.replace("%", "%%")))


def add_header(name: str, value: str) -> bytes:
    return encode(ADDHEADER, cstring(name) + cstring(value))


def change_header(index: int, name: str, value: str = "") -> bytes:
    """SMFIR_CHGHEADER: the `index`-th (1-based) header called `name` set to `value`; an empty value deletes it."""
    return encode(CHGHEADER, _LENGTH.pack(index) + cstring(name) + cstring(value))


def quarantine(reason: str) -> bytes:
    """SMFIR_QUARANTINE: Postfix puts the message on hold, Sendmail in its quarantine, with this reason."""
    return encode(QUARANTINE, cstring(reason or "held"))


def simple(command: bytes) -> bytes:
    """A reply without data: CONTINUE, ACCEPT, TEMPFAIL, REJECT, SKIP."""
    return encode(command)
