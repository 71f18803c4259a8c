"""Read the server name from a TLS ClientHello before OpenSSL sees it.

Why: OpenSSL checks a resumed session (TLS 1.2 session id or TLS 1.3 ticket) against the
context the connection was *created* with, before any servername callback can switch
contexts. If every connection started on one shared context, a session made on a hostname
that asks no certificate would resume on a hostname that requires one, without a certificate.
Reading the SNI first lets each connection be created on its own hostname's context, whose
session cache, ticket keys and session id context are its own: sessions never cross entries.

The reader is sans-IO: feed it bytes until :attr:`ClientHelloReader.complete`; everything
fed is kept in :attr:`buffered` to be handed to OpenSSL unchanged. It parses only as far as it
needs and never judges the rest: a malformed ClientHello is still handed to OpenSSL, which
answers with the proper TLS alert.
"""

from __future__ import annotations

import struct

_RECORD_HANDSHAKE = 22
_HANDSHAKE_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_MAX_HELLO = 65536   # no sane ClientHello is larger; stop buffering there


class NotTLS(Exception):
    """The first bytes are not a TLS handshake record."""

    def __init__(self, first_bytes: bytes) -> None:
        super().__init__("not a TLS handshake")
        self.looks_like_http = first_bytes[:1].isalpha()


class ClientHelloReader:
    __slots__ = ("buffered", "complete", "server_name", "malformed", "_hello", "_offset")

    def __init__(self) -> None:
        self.buffered: bytes | bytearray = bytearray()
        self.complete = False
        self.server_name: str | None = None
        self.malformed = False
        self._hello = bytearray()
        self._offset = 0      # end of the last complete record already joined into _hello

    def feed(self, data: bytes) -> bool:
        """Add wire bytes; True once the ClientHello is complete (or judged malformed)."""
        if self.complete:
            return True
        if not self.buffered and data:
            if data[0] != _RECORD_HANDSHAKE:
                raise NotTLS(data)
            if self._whole_in_first_record(data):
                return True
        self.buffered += data
        self._reassemble()
        return self.complete

    def _whole_in_first_record(self, data: bytes) -> bool:
        """The usual case, the whole ClientHello in the first record of the first read: read
        straight from ``data`` (which becomes :attr:`buffered`), without joining records."""
        if len(data) < 9 or data[5] != _HANDSHAKE_CLIENT_HELLO:
            return False
        record_end = 5 + ((data[3] << 8) | data[4])
        hello_end = 9 + int.from_bytes(data[6:9], "big")
        if hello_end > record_end or record_end > len(data):
            return False                # spread over records, or not all here yet
        self.buffered = data
        self._complete(data[9:hello_end])
        return True

    def _reassemble(self) -> None:
        """Join handshake bytes across records until the whole ClientHello is in.

        Incremental: only records completed since the last feed are looked at, so a client
        dribbling tiny records costs linear time, not quadratic.
        """
        offset = self._offset
        buf = self.buffered
        while offset + 5 <= len(buf):
            record_type = buf[offset]
            (length,) = struct.unpack_from("!H", buf, offset + 3)
            if record_type != _RECORD_HANDSHAKE or length == 0:
                self._give_up()
                return
            if offset + 5 + length > len(buf):
                break
            self._hello += buf[offset + 5: offset + 5 + length]
            offset += 5 + length
            self._offset = offset
            if self._try_parse():
                return
        if len(buf) > _MAX_HELLO:
            self._give_up()

    def _try_parse(self) -> bool:
        hello = self._hello
        if len(hello) < 4:
            return False
        if hello[0] != _HANDSHAKE_CLIENT_HELLO:
            self._give_up()
            return True
        length = int.from_bytes(hello[1:4], "big")
        if len(hello) < 4 + length:
            return False
        self._complete(bytes(hello[4:4 + length]))
        return True

    def _complete(self, body: bytes) -> None:
        """The whole ClientHello ``body`` is in: its server name, or malformed."""
        try:
            self.server_name = _server_name(body)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            self.malformed = True
        self.complete = True

    def _give_up(self) -> None:
        self.malformed = True
        self.complete = True


def _server_name(body: bytes) -> str | None:
    """The host_name entry of the server_name extension of a ClientHello body, if any."""
    pos = 2 + 32                                  # legacy_version, random
    pos += 1 + body[pos]                          # legacy_session_id
    (suites,) = struct.unpack_from("!H", body, pos)
    pos += 2 + suites
    pos += 1 + body[pos]                          # legacy_compression_methods
    if pos == len(body):
        return None                               # no extensions at all
    (ext_total,) = struct.unpack_from("!H", body, pos)
    pos += 2
    end = pos + ext_total
    if end > len(body):
        raise ValueError("extensions overrun the ClientHello")
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", body, pos)
        pos += 4
        if ext_type == _EXT_SERVER_NAME:
            return _host_name(body[pos:pos + ext_len])
        pos += ext_len
    return None


def _host_name(ext: bytes) -> str | None:
    (list_len,) = struct.unpack_from("!H", ext, 0)
    pos, end = 2, 2 + list_len
    while pos + 3 <= end:
        name_type = ext[pos]
        (name_len,) = struct.unpack_from("!H", ext, pos + 1)
        pos += 3
        if name_type == 0:
            return ext[pos:pos + name_len].decode("ascii")
        pos += name_len
    return None
