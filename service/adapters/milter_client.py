"""An MTA's side of the milter protocol, as Postfix's `milter8.c` drives it: for tests and the benchmark.

It offers what Postfix 3.7 offers (protocol 6, every action, every protocol step), sends
the macros before each event, skips the events and replies the filter declined, and
reads the end-of-message edits up to the final decision.

    python -m service.adapters.milter_client 127.0.0.1:10041 --user alice@example.net message.eml

sends one message and prints the filter's answer: a quick check of a running milter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

from service.adapters import milter_codec as codec

# What Postfix 3.7 offers: every action, and protocol 6's every step.
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF
FINAL = {codec.ACCEPT, codec.CONTINUE, codec.REJECT, codec.TEMPFAIL, codec.REPLYCODE, b"d", codec.SKIP}


@dataclass(frozen=True, slots=True)
class Frame:
    """Bytes for the filter: macros and one event; `answered` when the filter replies to it."""

    command: bytes
    data: bytes
    answered: bool


@dataclass
class Answer:
    """The filter's decision on one event, and at end of message the edits before it."""

    command: bytes  # c, a, r, t, y, d, s
    text: str | None = None  # the reply line of a REPLYCODE
    edits: list[tuple[bytes, bytes]] = field(default_factory=list)  # (h | m | q | ..., data)

    @property
    def kind(self) -> str:
        names = {b"c": "continue", b"a": "accept", b"r": "reject", b"t": "tempfail", b"y": "reply", b"d": "discard"}
        return names.get(self.command, "skip")

    @property
    def quarantined(self) -> str | None:
        return next((codec.text(d.rstrip(b"\0")) for c, d in self.edits if c == codec.QUARANTINE), None)

    @property
    def removed_headers(self) -> list[tuple[int, str]]:
        removed = []
        for command, data in self.edits:
            if command == codec.CHGHEADER:
                (index,) = struct.unpack_from(">I", data)
                name, value = codec.cstrings(data[4:])
                if not value:
                    removed.append((index, codec.text(name)))
        return removed

    @property
    def added_headers(self) -> list[tuple[str, str]]:
        added = []
        for command, data in self.edits:
            if command == codec.ADDHEADER:
                name, value = codec.cstrings(data)
                added.append((codec.text(name), codec.text(value)))
        return added


class MilterClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.negotiated = codec.Negotiation(0, 0, 0)
        self.macro_lists: dict[int, str] = {}

    @classmethod
    async def open(cls, host: str, port: int) -> MilterClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        await client.negotiate()
        return client

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            self.writer.write(codec.encode(codec.QUIT))
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def _packet(self) -> tuple[bytes, bytes]:
        length = codec.packet_length(await self.reader.readexactly(4))
        packet = await self.reader.readexactly(length)
        return packet[:1], packet[1:]

    async def negotiate(self, actions: int = POSTFIX_ACTIONS, protocol: int = POSTFIX_PROTOCOL) -> None:
        self.writer.write(codec.encode(codec.OPTNEG, struct.pack(">III", codec.PROTOCOL_VERSION, actions, protocol)))
        command, data = await self._packet()
        if command != codec.OPTNEG:
            raise codec.MilterProtocolError(f"negotiation answered {command!r}")
        self.negotiated = codec.parse_optneg(data)
        rest = data[12:]
        while rest:  # the macro lists the filter asked for
            (stage,) = struct.unpack_from(">I", rest)
            end = rest.index(b"\0", 4)
            self.macro_lists[stage] = codec.text(rest[4:end])
            rest = rest[end + 1 :]

    def _skipped(self, flag: int) -> bool:
        return bool(self.negotiated.protocol & flag)

    def frame(
        self,
        command: bytes,
        data: bytes = b"",
        macros: dict[str, str] | None = None,
        *,
        no_event: int = 0,
        no_reply: int = 0,
    ) -> Frame:
        """Macros, then the event (unless the filter declined it), and whether the filter answers it."""
        out = b""
        if macros:
            pairs = b"".join(codec.cstring(name) + codec.cstring(value) for name, value in macros.items())
            out += codec.encode(codec.MACRO, command + pairs)
        if no_event and self._skipped(no_event):
            return Frame(command, out, False)
        return Frame(command, out + codec.encode(command, data), not (no_reply and self._skipped(no_reply)))

    async def event(
        self,
        command: bytes,
        data: bytes = b"",
        macros: dict[str, str] | None = None,
        *,
        no_event: int = 0,
        no_reply: int = 0,
    ) -> Answer | None:
        frame = self.frame(command, data, macros, no_event=no_event, no_reply=no_reply)
        self.writer.write(frame.data)
        await self.writer.drain()
        return await self.answer() if frame.answered else None

    async def answer(self) -> Answer:
        edits: list[tuple[bytes, bytes]] = []
        while True:
            command, data = await self._packet()
            if command == codec.PROGRESS:
                continue
            if command in FINAL:
                text = codec.text(data.rstrip(b"\0")) if command == codec.REPLYCODE else None
                return Answer(command, text, edits)
            edits.append((command, data))

    # -- one SMTP session's events, as Postfix sends them

    async def connect(self, client_ip: str, macros: dict[str, str] | None = None, port: int = 40000) -> Answer | None:
        family = codec.FAMILY_INET6 if ":" in client_ip else codec.FAMILY_INET
        data = codec.cstring(f"[{client_ip}]") + family.encode() + struct.pack(">H", port) + codec.cstring(client_ip)
        return await self.event(codec.CONNECT, data, macros, no_event=codec.P_NOCONNECT, no_reply=codec.P_NR_CONN)

    async def helo(self, name: str) -> Answer | None:
        return await self.event(codec.HELO, codec.cstring(name), no_event=codec.P_NOHELO, no_reply=codec.P_NR_HELO)

    async def mail(self, sender: str, macros: dict[str, str] | None = None) -> Answer | None:
        return await self._send_one(self._mail_frame(sender, macros))

    async def rcpt(self, recipient: str, macros: dict[str, str] | None = None) -> Answer | None:
        return await self._send_one(self._rcpt_frame(recipient, macros))

    async def _send_one(self, frame: Frame) -> Answer | None:
        self.writer.write(frame.data)
        await self.writer.drain()
        return await self.answer() if frame.answered else None

    def _mail_frame(self, sender: str, macros: dict[str, str] | None) -> Frame:
        data = codec.cstring(f"<{sender}>")
        return self.frame(codec.MAIL, data, macros, no_event=codec.P_NOMAIL, no_reply=codec.P_NR_MAIL)

    def _rcpt_frame(self, recipient: str, macros: dict[str, str] | None) -> Frame:
        data = codec.cstring(f"<{recipient}>")
        return self.frame(codec.RCPT, data, macros, no_event=codec.P_NORCPT, no_reply=codec.P_NR_RCPT)

    def content_frames(self, raw: bytes, eom_macros: dict[str, str] | None = None) -> list[Frame]:
        """Headers (one event each, folded lines joined by LF, one leading space eaten), EOH, body chunks, EOM."""
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        fields: list[list[bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1].append(line)
            elif line:
                fields.append([line])
        frames = [self.frame(codec.DATA, no_event=codec.P_NODATA, no_reply=codec.P_NR_DATA)]
        for lines in fields:
            name, _, value = b"\n".join(lines).partition(b":")
            value = value[1:] if value.startswith(b" ") and not self._skipped(codec.P_HDR_LEADSPC) else value
            data = name.rstrip() + b"\0" + value + b"\0"
            frames.append(self.frame(codec.HEADER, data, no_event=codec.P_NOHDRS, no_reply=codec.P_NR_HDR))
        frames.append(self.frame(codec.EOH, no_event=codec.P_NOEOH, no_reply=codec.P_NR_EOH))
        wire = body.replace(b"\n", b"\r\n")
        for start in range(0, len(wire), codec.CHUNK):
            chunk = wire[start : start + codec.CHUNK]
            frames.append(self.frame(codec.BODY, chunk, no_event=codec.P_NOBODY, no_reply=codec.P_NR_BODY))
        frames.append(self.frame(codec.BODYEOB, macros=eom_macros))
        return frames

    def transaction(
        self,
        raw: bytes,
        *,
        sender: str,
        recipients: list[str],
        user: str | None = None,
        queue_id: str = "4AbC1d2EfG",
    ) -> list[Frame]:
        """A whole message's frames, encoded once (the benchmark sends the same ones again)."""
        frames = [self._mail_frame(sender, {"{auth_authen}": user} if user else {})]
        frames += [self._rcpt_frame(recipient, {"i": queue_id}) for recipient in recipients]
        return frames + self.content_frames(raw, {"i": queue_id})

    async def send_frames(self, frames: list[Frame]) -> tuple[str, Answer | None]:
        """Send a transaction: one write per answer awaited (the frames before it go with it, as Postfix
        batches events that get no answer). The stage that answered other than continue, and how."""
        pending = b""
        accepted = rcpts = 0
        last: Answer | None = None
        skipping = False
        for frame in frames:
            if skipping and frame.command == codec.BODY:
                continue
            if frame.command == codec.DATA and rcpts and not accepted:
                await self.abort()
                return "rcpt", last
            pending += frame.data
            if not frame.answered:
                continue
            self.writer.write(pending)
            pending = b""
            await self.writer.drain()
            answer = await self.answer()
            if frame.command == codec.RCPT:
                rcpts, last = rcpts + 1, answer
                accepted += answer.command == codec.CONTINUE
            elif answer.command == codec.SKIP:
                skipping = True
            elif frame.command == codec.BODYEOB:
                return "eom", answer
            elif answer.command != codec.CONTINUE:
                if frame.command == codec.MAIL:
                    await self.abort()
                    return "mail", answer
                return "eom", answer
        if pending:
            self.writer.write(pending)
            await self.writer.drain()
        return "eom", None

    async def content(self, raw: bytes, eom_macros: dict[str, str] | None = None) -> Answer | None:
        return (await self.send_frames(self.content_frames(raw, eom_macros)))[1]

    async def abort(self) -> None:
        self.writer.write(codec.encode(codec.ABORT))
        await self.writer.drain()

    async def send(
        self,
        raw: bytes,
        *,
        sender: str,
        recipients: list[str],
        user: str | None = None,
        queue_id: str = "4AbC1d2EfG",
    ) -> tuple[str, Answer | None]:
        """One message through MAIL, RCPT and the content: the stage that answered other than continue, and how."""
        frames = self.transaction(raw, sender=sender, recipients=recipients, user=user, queue_id=queue_id)
        return await self.send_frames(frames)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen", help="HOST:PORT of the milter")
    parser.add_argument("message", type=Path, help="an RFC 5322 message file")
    parser.add_argument("--user", help="the SASL user ({auth_authen})")
    parser.add_argument("--sender", default="alice@example.net")
    parser.add_argument("--rcpt", action="append", default=None)
    parser.add_argument("--client-ip", default="192.0.2.10")
    parser.add_argument("--daemon-name", default="default")
    options = parser.parse_args()
    host, _, port = options.listen.rpartition(":")
    client = await MilterClient.open(host.strip("[]"), int(port))
    await client.connect(options.client_ip, {"{daemon_name}": options.daemon_name})
    await client.helo("client.example.net")
    stage, answer = await client.send(
        options.message.read_bytes(),
        sender=options.sender,
        recipients=options.rcpt or ["bob@example.org"],
        user=options.user,
    )
    await client.close()
    print(f"{stage}: {answer.kind if answer else 'continue'} {answer.text or '' if answer else ''}".rstrip())
    if answer is not None:
        for command, data in answer.edits:
            print(f"  edit {command.decode()}: {data!r}")


if __name__ == "__main__":
    asyncio.run(_main())
