"""The server side of an HTTP/2 connection (RFC 9113), without I/O: frames in, events out.

Theory of operation
-------------------
:class:`ServerConnection` is fed the client's bytes (:meth:`~ServerConnection.receive_data`)
and returns what they mean as a list of small events; what the adapter sends (response heads,
body data, resets) is framed into an output buffer that :meth:`~ServerConnection.data_to_send`
empties. It never touches a socket or a clock, so every rule below is testable with bytes.

What it keeps per connection: the HPACK decoder (the ``hpack`` library: header compression is
the one part taken whole), both flow-control windows in each direction, the peer's settings,
and for each open stream whether each side has ended it. Header fields are not interpreted
here: :mod:`tlsgate.http.h2_fields` checks them and the adapter (:mod:`tlsgate.http.h2`)
enforces Content-Length, stream limits and header-list limits, as it did on top of h2.

Why not the h2 library: it is correct and well kept, but a request costs it ~95 µs of Python
on this project's bench machine (frame objects, flag sets, trace formatting of every frame,
an event per state change), more than half of tlsgate's whole HTTP/2 request, and the
issue's targets cannot be met above that. A server needs a fraction of what h2 covers (no
client side, no push, no priority tree), which fits in a few Python calls per frame. h2 stays
in the test suite as the oracle client, and as the bench's client.

Errors, as RFC 9113 §5.4 sorts them:

* a *connection error* queues GOAWAY with the code and raises :class:`ConnectionFailure`
  from :meth:`~ServerConnection.receive_data`; the connection is over (flush, then close);
* a *stream error* queues RST_STREAM for that stream only, emits :class:`StreamReset`
  (``remote=False``) when the stream was open, and the connection carries on.

Frames on streams that are already closed follow §5.1: after a RST_STREAM (ours or the
client's) they are ignored (a bounded record of reset streams is kept; DATA still counts
against the connection window, and is credited back); PRIORITY, WINDOW_UPDATE and
RST_STREAM on any closed stream are ignored; DATA or HEADERS on a lower stream id that is
not open, and not known as reset, are a connection error STREAM_CLOSED (a skipped id is
not told apart from a closed one); frames on a stream the client never opened are
PROTOCOL_ERROR. After our GOAWAY, streams above its last-stream-id are ignored whole:
their header blocks are still decoded (the HPACK table stays in step), their DATA credited.

Lenient on purpose: streams opened before the client acknowledged our SETTINGS keep a
receive window of at least the protocol's default 65,535 bytes, which the client may use
before it has seen our (possibly smaller) SETTINGS_INITIAL_WINDOW_SIZE.

Abuse limits: a frame over SETTINGS_MAX_FRAME_SIZE is refused from its 9-byte header; a
header block is capped in bytes (compressed and decoded) and in CONTINUATION frames;
SETTINGS are applied once per frame (last value per setting), so a frame of thousands of
entries costs one pass. Control replies (PING and SETTINGS ACKs, resets) are bounded by
the connection layer, which drops a client that makes replies pile up unread.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import hpack
import hpack.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# Flags
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# Settings (RFC 9113 §6.5.2)
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE_LIMIT = 2**24 - 1
#: Reset streams whose late frames are still recognized (and ignored).
RESET_STREAMS_REMEMBERED = 1024
#: CONTINUATION frames one header block may take (a legitimate one needs a handful).
MAX_CONTINUATIONS = 1000

_FRAME_HEADER = struct.Struct(">IBI")       # length << 8 | type, flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")


class ErrorCode(IntEnum):
    """RFC 9113 §7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


# -- events ----------------------------------------------------------------------------------


@dataclass(slots=True)
class RequestReceived:
    """A request's header block; ``ended``: END_STREAM came with it (no body)."""

    stream_id: int
    headers: list
    ended: bool


@dataclass(slots=True)
class DataReceived:
    """Body bytes. ``flow_controlled_length`` counts padding too; the padding is already
    credited back, ``len(data)`` is for the adapter to acknowledge once consumed."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    ended: bool


@dataclass(slots=True)
class TrailersReceived:
    """A header block after the body; it always ends the stream."""

    stream_id: int
    headers: list


@dataclass(slots=True)
class StreamReset:
    """A stream is gone: reset by the client (``remote``), or by us for a stream error."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(slots=True)
class WindowUpdated:
    """More may be sent: on one stream, or (``stream_id`` 0) on all of them, after a
    connection-level WINDOW_UPDATE or a larger SETTINGS_INITIAL_WINDOW_SIZE."""

    stream_id: int


@dataclass(slots=True)
class ConnectionTerminated:
    """The client sent GOAWAY."""

    error_code: int
    last_stream_id: int


# -- errors ----------------------------------------------------------------------------------


class ConnectionFailure(Exception):
    """A connection error: GOAWAY with ``code`` is queued and the connection is over."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class StreamClosed(Exception):
    """Something was to be sent on a stream that is closed (or was never opened)."""


class _StreamError(Exception):
    def __init__(self, code: ErrorCode) -> None:
        self.code = code


# -- the connection --------------------------------------------------------------------------


class _Stream:
    __slots__ = ("id", "send_window", "recv_window", "recv_unacked", "remote_ended",
                 "local_ended")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window      # what we may still send (the client's window)
        self.recv_window = recv_window      # what the client may still send us
        self.recv_unacked = 0               # consumed bytes not yet given back
        self.remote_ended = False
        self.local_ended = False


class ServerConnection:
    """One HTTP/2 connection, server side. See the module docstring.

    ``encoder`` encodes the header blocks we send (tlsgate's ``ResponseFieldEncoder``; any
    ``hpack.Encoder`` works). ``header_block_cap`` bounds a received header block, compressed
    and decoded: past it the connection ends with ENHANCE_YOUR_CALM.
    """

    def __init__(self, *, encoder: hpack.Encoder, max_concurrent_streams: int,
                 max_header_list_size: int, header_block_cap: int,
                 initial_window: int = DEFAULT_WINDOW,
                 connection_window: int = DEFAULT_WINDOW) -> None:
        if not DEFAULT_WINDOW <= connection_window <= MAX_WINDOW:
            # The client's connection window starts at 65,535 whatever we say.
            raise ValueError(f"connection window of {connection_window} bytes")
        self._encoder = encoder
        self._decoder = hpack.Decoder(max_header_list_size=header_block_cap)
        self._header_block_cap = header_block_cap
        self._local_settings = {
            SETTINGS_ENABLE_PUSH: 0,
            SETTINGS_MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SETTINGS_INITIAL_WINDOW_SIZE: initial_window,
            SETTINGS_MAX_HEADER_LIST_SIZE: max_header_list_size,
        }
        self._initial_window = initial_window
        self._settings_acked = False
        self._connection_window_size = connection_window
        # receiving
        self._buffer = bytearray()
        self._preface_left = len(PREFACE)   # bytes of the client preface still expected
        self._settings_seen = False
        self._recv_window = connection_window
        self._recv_unacked = 0
        self._continuing: tuple[int, int, bool] | None = None   # (stream, flags, bad priority)
        self._block = bytearray()
        self._continuations = 0
        # sending
        self._out: list[bytes] = []
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.max_inbound_frame_size = DEFAULT_MAX_FRAME_SIZE
        # streams
        self._streams: dict[int, _Stream] = {}
        self._last_stream_id = 0
        self._reset_streams: dict[int, None] = {}
        self._goaway_last_id: int | None = None   # set once our GOAWAY is queued
        self.terminated = False

    # -- setup ------------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queue our SETTINGS and open the connection window to its configured size."""
        payload = b"".join(_SETTING.pack(k, v) for k, v in self._local_settings.items())
        self._frame(SETTINGS, 0, 0, payload)
        increment = self._connection_window_size - DEFAULT_WINDOW
        if increment > 0:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list:
        """The events ``data`` completes; raises :class:`ConnectionFailure` (GOAWAY queued)."""
        if self.terminated:
            return []
        events: list = []
        buffer = self._buffer
        buffer += data
        last_before = self._last_stream_id
        try:
            if self._preface_left:
                self._read_preface()
            position, size = 0, len(buffer)
            max_size = self.max_inbound_frame_size
            while size - position >= 9:
                length_type, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, position)
                length = length_type >> 8
                if length > max_size:
                    # Refused from its header alone, before a 16 MB body is buffered.
                    raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR,
                                            f"frame of {length} bytes, maximum {max_size}")
                end = position + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[position + 9:end])
                position = end
                self._on_frame(length_type & 0xFF, flags, stream_id & 0x7FFFFFFF, payload,
                               events)
            del buffer[:position]
        except ConnectionFailure as failure:
            # Streams this input opened are dropped with it: the GOAWAY does not count them.
            self._terminate(failure.code, failure.message, min(last_before, self._last_stream_id))
            raise
        return events

    def _read_preface(self) -> None:
        buffer = self._buffer
        seen = len(PREFACE) - self._preface_left
        take = min(len(buffer), self._preface_left)
        if bytes(buffer[:take]) != PREFACE[seen:seen + take]:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
        del buffer[:take]
        self._preface_left -= take

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes,
                  events: list) -> None:
        if not self._settings_seen:
            if kind != SETTINGS or flags & FLAG_ACK:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                        "the client preface must start with SETTINGS")
            self._settings_seen = True
        if self._continuing is not None and kind != CONTINUATION:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                    "a header block was interrupted by another frame")
        try:
            if kind == HEADERS:
                self._on_headers(flags, stream_id, payload, events)
            elif kind == DATA:
                self._on_data(flags, stream_id, payload, events)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, events)
            elif kind == CONTINUATION:
                self._on_continuation(flags, stream_id, payload, events)
            elif kind == RST_STREAM:
                self._on_rst_stream(stream_id, payload, events)
            elif kind == SETTINGS:
                self._on_settings(flags, stream_id, payload, events)
            elif kind == PING:
                self._on_ping(flags, stream_id, payload)
            elif kind == PRIORITY:
                self._on_priority(stream_id, payload)
            elif kind == GOAWAY:
                self._on_goaway(stream_id, payload, events)
            elif kind == PUSH_PROMISE:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # other types are extensions: ignored (RFC 9113 §4.1)
        except _StreamError as error:
            self._stream_error(stream_id, error.code, events)

    # -- HEADERS and CONTINUATION -------------------------------------------------------------

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                    f"HEADERS on stream {stream_id}")
        start, pad = 0, 0
        if flags & FLAG_PADDED:
            if not payload:
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "HEADERS without pad length")
            start, pad = 1, payload[0]
        bad_priority = False
        if flags & FLAG_PRIORITY:
            if len(payload) < start + 5:
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority cut short")
            bad_priority = _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == stream_id
            start += 5
        if pad > len(payload) - start:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
        fragment = payload[start:len(payload) - pad]
        if flags & FLAG_END_HEADERS:
            self._on_header_block(stream_id, flags, fragment, bad_priority, events)
        else:
            self._continuing = (stream_id, flags, bad_priority)
            self._block = bytearray(fragment)
            self._continuations = 0
            self._check_block_size()

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes,
                         events: list) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._block += payload
        self._continuations += 1
        if self._continuations > MAX_CONTINUATIONS:
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM,
                                    f"header block in over {MAX_CONTINUATIONS} frames")
        self._check_block_size()
        if flags & FLAG_END_HEADERS:
            _, first_flags, bad_priority = self._continuing
            self._continuing = None
            block, self._block = bytes(self._block), bytearray()
            self._on_header_block(stream_id, first_flags, block, bad_priority, events)

    def _check_block_size(self) -> None:
        if len(self._block) > self._header_block_cap:
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM,
                                    f"header block over {self._header_block_cap} bytes")

    def _on_header_block(self, stream_id: int, flags: int, block: bytes, bad_priority: bool,
                         events: list) -> None:
        # Decoded whatever becomes of the stream: the HPACK table must stay in step.
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.exceptions.OversizedHeaderListError:
            raise ConnectionFailure(ErrorCode.ENHANCE_YOUR_CALM,
                                    f"header list over {self._header_block_cap} bytes") from None
        except hpack.exceptions.HPACKError as exc:
            raise ConnectionFailure(ErrorCode.COMPRESSION_ERROR, f"HPACK: {exc}") from None
        ended = bool(flags & FLAG_END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._on_trailers(stream, headers, ended, events)
        elif stream_id <= self._last_stream_id:
            self._on_closed_stream(stream_id, "HEADERS")
        elif self._goaway_last_id is not None:
            return                      # past our GOAWAY: ignored (RFC 9113 §6.8)
        else:
            self._last_stream_id = stream_id
            if bad_priority:
                raise _StreamError(ErrorCode.PROTOCOL_ERROR)
            window = self._initial_window if self._settings_acked else \
                max(self._initial_window, DEFAULT_WINDOW)
            stream = _Stream(stream_id, self._peer_initial_window, window)
            stream.remote_ended = ended
            self._streams[stream_id] = stream
            events.append(RequestReceived(stream_id, headers, ended))

    def _on_trailers(self, stream: _Stream, headers: list, ended: bool, events: list) -> None:
        if stream.remote_ended:
            raise _StreamError(ErrorCode.STREAM_CLOSED)
        if not ended:
            # A header block in mid-stream is neither a request nor trailers (§8.1).
            raise _StreamError(ErrorCode.PROTOCOL_ERROR)
        stream.remote_ended = True
        events.append(TrailersReceived(stream.id, headers))
        if stream.local_ended:
            del self._streams[stream.id]

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened by the client (streams past our GOAWAY are ignored, not idle)."""
        return stream_id > self._last_stream_id and self._goaway_last_id is None

    def _on_closed_stream(self, stream_id: int, kind: str) -> None:
        """DATA or HEADERS on a stream id below the newest one, not open any more."""
        if stream_id in self._reset_streams:
            return
        raise ConnectionFailure(ErrorCode.STREAM_CLOSED, f"{kind} on closed stream {stream_id}")

    # -- DATA -------------------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_window -= size
        if self._recv_window < 0:
            raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR,
                                    "DATA beyond the connection window")
        data = _strip_padding(payload) if flags & FLAG_PADDED else payload
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            self._credit_connection(size)       # nobody will read it
            if stream is not None:
                raise _StreamError(ErrorCode.STREAM_CLOSED)
            if self._is_idle(stream_id):
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                        f"DATA on idle stream {stream_id}")
            if stream_id <= self._last_stream_id:   # else ignored after our GOAWAY
                self._on_closed_stream(stream_id, "DATA")
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR,
                                    f"DATA beyond the window of stream {stream_id}")
        ended = bool(flags & FLAG_END_STREAM)
        if size != len(data):
            self.acknowledge_received_data(size - len(data), stream_id)   # the padding
        if ended:
            stream.remote_ended = True
            if stream.local_ended:
                del self._streams[stream_id]
        events.append(DataReceived(stream_id, data, size, ended))

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """``size`` bytes of ``stream_id``'s body were consumed: reopen both windows, a
        WINDOW_UPDATE once a quarter of a window is owed (not one per frame)."""
        if size <= 0:
            return
        self._credit_connection(size)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended:
            return                      # nothing more will come on it
        stream.recv_unacked += size
        if stream.recv_unacked >= self._initial_window >> 2 or stream.recv_window <= 0:
            stream.recv_window += stream.recv_unacked
            self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.recv_unacked))
            stream.recv_unacked = 0

    def _credit_connection(self, size: int) -> None:
        if size <= 0:
            return
        self._recv_unacked += size
        if self._recv_unacked >= self._connection_window_size >> 2 or self._recv_window <= 0:
            self._recv_window += self._recv_unacked
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked))
            self._recv_unacked = 0

    # -- control frames ---------------------------------------------------------------------

    def _on_window_update(self, stream_id: int, payload: bytes, events: list) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of wrong size")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR,
                                        "connection window over 2^31-1")
            events.append(WindowUpdated(0))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                        f"WINDOW_UPDATE on idle stream {stream_id}")
            return                      # a closed stream: ignored
        if increment == 0:
            raise _StreamError(ErrorCode.PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _StreamError(ErrorCode.FLOW_CONTROL_ERROR)
        events.append(WindowUpdated(stream_id))

    def _on_rst_stream(self, stream_id: int, payload: bytes, events: list) -> None:
        if len(payload) != 4:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of wrong size")
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            if self._is_idle(stream_id):
                raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR,
                                        f"RST_STREAM on idle stream {stream_id}")
            return
        self._remember_reset(stream_id)     # DATA already in flight is then ignored
        events.append(StreamReset(stream_id, _U32.unpack(payload)[0], True))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list) -> None:
        if stream_id:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_acked = True
            return
        if len(payload) % 6:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of wrong size")
        # Every entry is checked in order (RFC 9113 §6.5.3); each setting is then applied
        # once, its last value winning, so that thousands of entries cost one pass over the
        # streams. The HPACK table size is the exception: the smallest value in the frame
        # matters too (RFC 7541 §4.2), so both are handed to the encoder.
        table_sizes = []
        values = {}
        for setting, value in _SETTING.iter_unpack(payload):
            _check_setting(setting, value)
            if setting == SETTINGS_HEADER_TABLE_SIZE:
                table_sizes.append(value)
            values[setting] = value
        if table_sizes:
            self._encoder.header_table_size = min(table_sizes)
            self._encoder.header_table_size = table_sizes[-1]
        window_grew = False
        if SETTINGS_INITIAL_WINDOW_SIZE in values:
            window_grew = self._set_peer_initial_window(values[SETTINGS_INITIAL_WINDOW_SIZE])
        if SETTINGS_MAX_FRAME_SIZE in values:
            self.max_outbound_frame_size = values[SETTINGS_MAX_FRAME_SIZE]
        # MAX_CONCURRENT_STREAMS (we open none), MAX_HEADER_LIST_SIZE (advisory) and
        # unknown settings need nothing.
        self._frame(SETTINGS, FLAG_ACK, 0, b"")
        if window_grew:
            events.append(WindowUpdated(0))

    def _set_peer_initial_window(self, value: int) -> bool:
        delta = value - self._peer_initial_window
        self._peer_initial_window = value
        for stream in self._streams.values():      # RFC 9113 §6.9.2
            stream.send_window += delta
            if stream.send_window > MAX_WINDOW:
                raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR,
                                        "a stream window over 2^31-1")
        return delta > 0

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "PING of wrong size")
        if not flags & FLAG_ACK:
            self._frame(PING, FLAG_ACK, 0, payload)

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        broken = ErrorCode.FRAME_SIZE_ERROR if len(payload) != 5 else \
            ErrorCode.PROTOCOL_ERROR if _U32.unpack(payload[:4])[0] & 0x7FFFFFFF == stream_id \
            else None
        if broken is None:
            return          # priorities are advice (RFC 9113 §5.3.2, deprecated): ignored
        if stream_id in self._streams:
            raise _StreamError(broken)
        if stream_id > self._last_stream_id:
            # An idle stream cannot be reset (§6.4): the connection answers for it.
            raise ConnectionFailure(broken, f"malformed PRIORITY on idle stream {stream_id}")
        # on a closed stream: ignored

    def _on_goaway(self, stream_id: int, payload: bytes, events: list) -> None:
        if stream_id:
            raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY cut short")
        last, code = struct.unpack_from(">II", payload)
        events.append(ConnectionTerminated(code, last & 0x7FFFFFFF))

    def _stream_error(self, stream_id: int, code: ErrorCode, events: list) -> None:
        self._send_reset(stream_id, code)
        if self._streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, code, False))

    def _send_reset(self, stream_id: int, code: ErrorCode) -> None:
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        self._remember_reset(stream_id)

    def _remember_reset(self, stream_id: int) -> None:
        reset = self._reset_streams
        reset[stream_id] = None
        if len(reset) > RESET_STREAMS_REMEMBERED:
            del reset[next(iter(reset))]

    # -- output -----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self._out.append(_FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream_id))
        if payload:
            self._out.append(payload)

    def _sending_stream(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_ended:
            raise StreamClosed(f"stream {stream_id} is closed")
        return stream

    def send_headers(self, stream_id: int, headers, end_stream: bool = False) -> None:
        """A header block (response head or trailers), split into CONTINUATION frames past
        the client's maximum frame size."""
        stream = self._sending_stream(stream_id)
        block = self._encoder.encode(headers)
        end = FLAG_END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        if len(block) <= limit:
            self._frame(HEADERS, FLAG_END_HEADERS | end, stream_id, block)
        else:
            self._frame(HEADERS, end, stream_id, block[:limit])
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                self._frame(CONTINUATION, FLAG_END_HEADERS if last else 0, stream_id,
                            block[start:start + limit])
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Body bytes in one DATA frame: at most :meth:`local_flow_control_window` and
        :attr:`max_outbound_frame_size` bytes (ValueError beyond). An empty frame that ends
        the stream needs no window (it may be negative after a SETTINGS change)."""
        stream = self._sending_stream(stream_id)
        size = len(data)
        if size and (size > self._send_window or size > stream.send_window or
                     size > self.max_outbound_frame_size):
            raise ValueError(f"{size} bytes exceed the window or the frame size")
        self._send_window -= size
        stream.send_window -= size
        self._frame(DATA, FLAG_END_STREAM if end_stream else 0, stream_id, data)
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def _end_local(self, stream: _Stream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            del self._streams[stream.id]

    def awaits_data(self, stream_id: int) -> bool:
        """Whether the client may still send DATA on the stream (not ended, not reset)."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.remote_ended

    @property
    def receive_window_open(self) -> bool:
        """Whether the client may send DATA at all (the connection's receive window)."""
        return self._recv_window > 0

    def may_receive(self, stream_id: int) -> bool:
        """Whether flow control lets the client send DATA on the stream now (both receive
        windows open): a body that does not come while this is False is held back by us."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.remote_ended and \
            stream.recv_window > 0 and self._recv_window > 0

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream is open here (not ended by us, nor reset by either side)."""
        stream = self._streams.get(stream_id)
        return stream is not None and not stream.local_ended

    def local_flow_control_window(self, stream_id: int) -> int:
        """How many body bytes may be sent on the stream now."""
        stream = self._sending_stream(stream_id)
        return min(self._send_window, stream.send_window)

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """RST_STREAM; StreamClosed when the stream is no longer open."""
        if self._streams.pop(stream_id, None) is None:
            raise StreamClosed(f"stream {stream_id} is closed")
        self._send_reset(stream_id, code)

    def close_connection(self, code: ErrorCode = ErrorCode.NO_ERROR) -> None:
        """GOAWAY: streams up to the newest one may finish, later ones are ignored."""
        if self._goaway_last_id is None:
            self._goaway(code, b"", self._last_stream_id)

    def _goaway(self, code: ErrorCode, debug: bytes, last_stream_id: int) -> None:
        if self._goaway_last_id is not None:
            last_stream_id = min(last_stream_id, self._goaway_last_id)  # never grows (§6.8)
        self._goaway_last_id = last_stream_id
        self._frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)

    def _terminate(self, code: ErrorCode, message: str, last_stream_id: int) -> None:
        self.terminated = True
        self._goaway(code, message.encode("ascii", "replace")[:256], last_stream_id)

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        return data

    @property
    def open_streams(self) -> int:
        return len(self._streams)


def _check_setting(setting: int, value: int) -> None:
    if setting == SETTINGS_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
        raise ConnectionFailure(ErrorCode.FLOW_CONTROL_ERROR,
                                f"SETTINGS_INITIAL_WINDOW_SIZE of {value}")
    if setting == SETTINGS_MAX_FRAME_SIZE and \
            not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
        raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE of {value}")
    if setting == SETTINGS_ENABLE_PUSH and value > 1:
        raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH of {value}")


def _strip_padding(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionFailure(ErrorCode.FRAME_SIZE_ERROR, "padded frame without pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionFailure(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]
