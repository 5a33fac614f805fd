"""The milter codec on the byte sequences Postfix 3.7 (`milter8.c`) and Sendmail 8 send."""

from __future__ import annotations

import pytest

from service.adapters import milter_codec as codec

# Postfix 3.7 opening a milter connection (milter_protocol = 6): version 6, every action
# (0x1ff), every protocol step of version 6 (0x1fffff).
POSTFIX_OPTNEG = b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff"
# Its connect macros and event for a client behind XCLIENT (host name unknown: `[addr]`).
POSTFIX_CONNECT_MACROS = b"DCj\x00relay.example.net\x00{daemon_name}\x00relay.example.net\x00v\x00Postfix 3.7.11\x00"
POSTFIX_CONNECT = b"C[192.0.2.7]\x004\x9c\x40192.0.2.7\x00"  # port 40000
POSTFIX_MAIL_MACROS = b"DM{auth_authen}\x00alice@example.net\x00{client_addr}\x00192.0.2.7\x00"
POSTFIX_MAIL = b"M<alice@example.net>\x00SIZE=296\x00BODY=8BITMIME\x00"
# A folded header: continuation lines joined by LF, the space after the colon eaten.
POSTFIX_HEADER = b"LReceived\x00from a (a [192.0.2.1])\n\tby b; Mon, 23 Nov 2026 10:00:00 +0000\x00"


def frame(packet: bytes) -> tuple[bytes, bytes]:
    """A whole packet (length included) as the server reads it: command, data."""
    length = codec.packet_length(packet[:4])
    assert length == len(packet) - 4
    return packet[4:5], packet[5:]


def test_postfix_negotiation_is_read_and_answered_with_what_was_offered() -> None:
    command, data = frame(POSTFIX_OPTNEG)
    assert command == codec.OPTNEG
    offer = codec.parse_optneg(data)
    assert offer == codec.Negotiation(version=6, actions=0x1FF, protocol=0x1FFFFF)
    reply = codec.optneg_reply(6, 0x131, 0x73380, {codec.M_CONNECT: ["j", "{daemon_name}"], codec.M_EOM: ["i"]})
    assert reply == (
        b"\x00\x00\x00\x27O"
        b"\x00\x00\x00\x06\x00\x00\x01\x31\x00\x07\x33\x80"
        b"\x00\x00\x00\x00j {daemon_name}\x00"
        b"\x00\x00\x00\x05i\x00"
    )


def test_macros_are_read_per_stage_with_their_braces_dropped() -> None:
    stage, values = codec.parse_macros(POSTFIX_CONNECT_MACROS[1:])
    assert stage == codec.CONNECT
    assert values == {"j": "relay.example.net", "daemon_name": "relay.example.net", "v": "Postfix 3.7.11"}
    stage, values = codec.parse_macros(POSTFIX_MAIL_MACROS[1:])
    assert (stage, values["auth_authen"], values["client_addr"]) == (codec.MAIL, "alice@example.net", "192.0.2.7")
    assert codec.parse_macros(b"T") == (codec.DATA, {})  # Postfix sends empty macro packets too


def test_connect_events_for_each_address_family() -> None:
    assert codec.parse_connect(POSTFIX_CONNECT[1:]) == codec.Connect("[192.0.2.7]", "4", 40000, "192.0.2.7")
    sendmail_v6 = b"client.example.net\x006\x01\xbbIPv6:2001:db8::7\x00"
    assert codec.parse_connect(sendmail_v6) == codec.Connect("client.example.net", "6", 443, "IPv6:2001:db8::7")
    assert codec.parse_connect(b"localhost\x00L\x00\x00/run/smtpd.sock\x00").family == "L"
    assert codec.parse_connect(b"unknown\x00U") == codec.Connect("unknown", "U", None, None)


def test_envelope_and_headers_keep_their_bytes() -> None:
    assert codec.parse_args(POSTFIX_MAIL[1:]) == ["<alice@example.net>", "SIZE=296", "BODY=8BITMIME"]
    name, value = codec.parse_header(POSTFIX_HEADER[1:])
    assert (name, value) == (b"Received", b"from a (a [192.0.2.1])\n\tby b; Mon, 23 Nov 2026 10:00:00 +0000")
    # 8-bit header text stays as it came; decoding for metadata never raises.
    assert codec.parse_header(b"Subject\x00caf\xe9\x00") == (b"Subject", b"caf\xe9")
    assert codec.text(b"caf\xe9") == "caf\ufffd"


def test_replies_are_framed_as_postfix_reads_them() -> None:
    assert codec.simple(codec.CONTINUE) == b"\x00\x00\x00\x01c"
    line = "550 5.7.1 Account alice@example.net is locked: 100% sure (incident 8f2c41d0). Contact support."
    packet = codec.reply_code(line)
    command, data = frame(packet)
    # Postfix and Sendmail read the text as a format: a literal % is sent doubled.
    assert (command, data) == (codec.REPLYCODE, line.replace("%", "%%").encode() + b"\x00")
    assert codec.change_header(2, "X-Customer-ID") == b"\x00\x00\x00\x14m\x00\x00\x00\x02X-Customer-ID\x00\x00"
    assert codec.add_header("X-Outguard", "hold") == b"\x00\x00\x00\x11hX-Outguard\x00hold\x00"
    assert codec.quarantine("held for review") == b"\x00\x00\x00\x11qheld for review\x00"


@pytest.mark.parametrize(
    ("parse", "data", "why"),
    [
        (codec.parse_optneg, b"\x00\x00\x00\x06", "12 of version"),
        (codec.parse_macros, b"", "without the command"),
        (codec.parse_connect, b"no-family", "without a host name"),
        (codec.parse_header, b"Subject\x00", "not a name and a value"),
        (codec.parse_header, b"Subject\x00unterminated", "not NUL-terminated"),
        (codec.parse_args, b"", "without an address"),
    ],
)
def test_malformed_packets_are_protocol_errors(parse: object, data: bytes, why: str) -> None:
    with pytest.raises(codec.MilterProtocolError, match=why):
        parse(data)  # type: ignore[operator]


def test_a_zero_length_packet_is_refused() -> None:
    with pytest.raises(codec.MilterProtocolError):
        codec.packet_length(b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="NUL"):
        codec.cstring("a\0b")
