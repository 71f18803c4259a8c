"""The sans-IO HTTP/2 engine (tlsgate.http.h2_engine), byte for byte, without sockets.

The peer is the h2 library's client where a well-behaved client will do, and hand-made
frames (hyperframe, hpack) where the client must misbehave. Each test names the RFC 9113
rule it holds the engine to.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hyperframe import frame as hf
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsgate.http import h2_engine
from tlsgate.http.h2_engine import (
    ConnectionFailure,
    DataReceived,
    ErrorCode,
    RequestReceived,
    ServerConnection,
    StreamClosed,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from tlsgate.http.h2_fields import ResponseFieldEncoder

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
           (b":path", b"/echo")]
POST = [(b":method", b"POST"), *REQUEST[1:]]


def new_server(**overrides) -> ServerConnection:
    options = dict(encoder=ResponseFieldEncoder(), max_concurrent_streams=100,
                   max_header_list_size=16384, header_block_cap=65536,
                   initial_window=1 << 20, connection_window=1 << 24)
    options.update(overrides)
    server = ServerConnection(**options)
    server.initiate_connection()
    return server


def client_pair(**overrides):
    """A server and an h2 client that have exchanged prefaces and SETTINGS."""
    server = new_server(**overrides)
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.initiate_connection()
    assert server.receive_data(client.data_to_send()) == []
    client.receive_data(server.data_to_send())
    assert server.receive_data(client.data_to_send()) == []     # its SETTINGS ACK
    return server, client


def raw_server(**overrides) -> ServerConnection:
    """A server that has read the preface and an empty SETTINGS, for hand-made frames."""
    server = new_server(**overrides)
    server.receive_data(h2_engine.PREFACE + hf.SettingsFrame(0).serialize())
    server.data_to_send()
    return server


def frames_of(data: bytes) -> list[hf.Frame]:
    frames = []
    while data:
        frame, length = hf.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


def goaway_code(server: ServerConnection) -> int:
    (goaway,) = [f for f in frames_of(server.data_to_send()) if isinstance(f, hf.GoAwayFrame)]
    return goaway.error_code


def fails_with(server: ServerConnection, data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ConnectionFailure) as caught:
        server.receive_data(data)
    assert caught.value.code == code
    assert goaway_code(server) == code
    assert server.receive_data(b"anything") == []          # the connection is over


def headers_frame(stream_id: int, fields, *, encoder=None, flags=("END_HEADERS",)) -> bytes:
    frame = hf.HeadersFrame(stream_id, flags=flags)
    frame.data = (encoder or hpack.Encoder()).encode(fields)
    return frame.serialize()


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A frame as bytes, also one that hyperframe would refuse to build."""
    return struct.pack(">IBI", len(payload) << 8 | kind, flags, stream_id) + payload


def rst_codes(data: bytes) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in frames_of(data) if isinstance(f, hf.RstStreamFrame)}


# -- the connection's start -------------------------------------------------------------------


def test_our_settings_and_connection_window_reach_the_client():
    server, client = client_pair(max_concurrent_streams=7, initial_window=300_000)
    assert client.remote_settings.max_concurrent_streams == 7
    assert client.remote_settings.initial_window_size == 300_000
    assert client.remote_settings.enable_push == 0
    assert client.outbound_flow_control_window == 1 << 24


def test_a_wrong_preface_is_protocol_error():
    fails_with(new_server(), b"GET / HTTP/1.1\r\n\r\n" + b"x" * 8, ErrorCode.PROTOCOL_ERROR)


def test_a_preface_in_pieces_is_fine_and_must_be_followed_by_settings():
    server = new_server()
    for piece in (h2_engine.PREFACE[:5], h2_engine.PREFACE[5:20], h2_engine.PREFACE[20:]):
        assert server.receive_data(piece) == []
    fails_with(server, hf.PingFrame(0).serialize(), ErrorCode.PROTOCOL_ERROR)


# -- requests, responses ----------------------------------------------------------------------


def test_a_get_and_its_response_round_trip_through_a_real_client():
    server, client = client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    (event,) = server.receive_data(client.data_to_send())
    assert isinstance(event, RequestReceived) and event.stream_id == 1 and event.ended
    assert [tuple(h) for h in event.headers] == REQUEST
    server.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    server.send_data(1, b"hello", end_stream=True)
    events = client.receive_data(server.data_to_send())
    kinds = [type(e) for e in events]
    assert kinds == [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded]
    assert events[1].data == b"hello"
    assert server.open_streams == 0
    with pytest.raises(StreamClosed):
        server.send_data(1, b"more")


def test_a_body_in_padded_frames_arrives_without_padding_and_the_padding_is_credited():
    server, client = client_pair(connection_window=65535, initial_window=65535)
    client.send_headers(1, POST)
    client.send_data(1, b"a" * 1000, pad_length=200)
    client.send_data(1, b"b" * 16000)
    events = server.receive_data(client.data_to_send())
    data = [e for e in events if isinstance(e, DataReceived)]
    assert [(e.data, e.flow_controlled_length, e.ended) for e in data] == [
        (b"a" * 1000, 1201, False), (b"b" * 16000, 16000, False)]
    # The body is given back as it is consumed, the padding at once; a WINDOW_UPDATE goes
    # out once a quarter of a window is owed.
    server.acknowledge_received_data(1000, 1)
    assert server.data_to_send() == b""
    server.acknowledge_received_data(16000, 1)
    updates = frames_of(server.data_to_send())
    assert sorted((f.stream_id, f.window_increment) for f in updates) == [(0, 17201), (1, 17201)]


def test_a_header_block_split_over_continuation_frames_is_one_request():
    server, client = client_pair()
    big = REQUEST + [(b"x-big", b"v" * 40_000)]
    client.send_headers(1, big, end_stream=True)
    data = client.data_to_send()
    assert any(isinstance(f, hf.ContinuationFrame) for f in frames_of(data))
    (event,) = server.receive_data(data)
    assert [tuple(h) for h in event.headers] == big


def test_a_response_head_larger_than_a_frame_goes_out_in_continuation_frames():
    server, client = client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    head = [(b":status", b"200"), (b"x-long", b"z" * 40_000)]
    server.send_headers(1, head, end_stream=True)
    data = server.data_to_send()
    assert [type(f) for f in frames_of(data)] == [
        hf.HeadersFrame, hf.ContinuationFrame, hf.ContinuationFrame]
    (response, ended) = client.receive_data(data)
    assert response.headers == head and isinstance(ended, h2.events.StreamEnded)


def test_trailers_end_the_stream():
    server, client = client_pair()
    client.send_headers(1, POST)
    client.send_data(1, b"body")
    client.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events] == [RequestReceived, DataReceived, TrailersReceived]
    assert [tuple(h) for h in events[2].headers] == [(b"x-checksum", b"1")]


def test_a_header_block_in_mid_stream_without_end_stream_resets_that_stream_only():
    server = raw_server()
    encoder = hpack.Encoder()
    server.receive_data(headers_frame(1, POST, encoder=encoder))
    events = server.receive_data(headers_frame(1, [(b"x", b"y")], encoder=encoder))
    assert [(type(e), e.remote) for e in events] == [(StreamReset, False)]
    assert rst_codes(server.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    (event,) = server.receive_data(headers_frame(3, REQUEST, encoder=encoder,
                                                 flags=("END_HEADERS", "END_STREAM")))
    assert isinstance(event, RequestReceived)


# -- flow control -----------------------------------------------------------------------------


def test_data_beyond_the_stream_window_is_flow_control_error():
    server = raw_server(initial_window=65535)
    server.receive_data(headers_frame(1, POST))
    data = hf.DataFrame(1, data=b"x" * 16384).serialize()
    server.receive_data(data * 3 + hf.DataFrame(1, data=b"x" * 16383).serialize())
    fails_with(server, hf.DataFrame(1, data=b"x").serialize(), ErrorCode.FLOW_CONTROL_ERROR)


def test_data_beyond_the_connection_window_is_flow_control_error():
    server = raw_server(initial_window=1 << 20, connection_window=65535)
    for stream_id in (1, 3):
        server.receive_data(headers_frame(stream_id, POST))
    server.receive_data(hf.DataFrame(1, data=b"x" * 16384).serialize() * 3)
    fails_with(server, hf.DataFrame(3, data=b"x" * 16384).serialize(),
               ErrorCode.FLOW_CONTROL_ERROR)


def test_sending_waits_for_the_clients_windows():
    server, client = client_pair()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    client.send_headers(1, REQUEST, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[-1], RequestReceived)
    server.send_headers(1, [(b":status", b"200")])
    assert server.local_flow_control_window(1) == 10
    with pytest.raises(ValueError):
        server.send_data(1, b"x" * 11)
    server.send_data(1, b"x" * 10)
    assert server.local_flow_control_window(1) == 0
    client.receive_data(server.data_to_send())
    client.increment_flow_control_window(5, stream_id=1)
    assert [type(e) for e in server.receive_data(client.data_to_send())] == [WindowUpdated]
    assert server.local_flow_control_window(1) == 5


def test_a_larger_initial_window_setting_grows_open_streams_and_says_so():
    server, client = client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    client.increment_flow_control_window(1000)         # the connection's window: 66,535
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65545})
    events = server.receive_data(client.data_to_send())
    assert [(type(e), e.stream_id) for e in events] == [(WindowUpdated, 0), (WindowUpdated, 0)]
    assert server.local_flow_control_window(1) == 65545


def test_consumed_data_reopens_the_windows_a_quarter_at_a_time():
    server = raw_server(initial_window=65536, connection_window=1 << 20)
    server.receive_data(headers_frame(1, POST))
    server.receive_data(hf.DataFrame(1, data=b"x" * 16384).serialize() * 2)
    server.acknowledge_received_data(16383, 1)
    assert server.data_to_send() == b""                      # under a quarter: nothing yet
    server.acknowledge_received_data(1, 1)
    updates = frames_of(server.data_to_send())
    assert [(f.stream_id, f.window_increment) for f in updates] == [(1, 16384)]


def test_window_update_rules():
    server = raw_server()
    server.receive_data(headers_frame(1, POST))
    (event,) = server.receive_data(hf.WindowUpdateFrame(1, window_increment=0).serialize())
    assert (type(event), event.stream_id, event.remote) == (StreamReset, 1, False)
    assert rst_codes(server.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    fails_with(server, hf.WindowUpdateFrame(0, window_increment=0).serialize(),
               ErrorCode.PROTOCOL_ERROR)
    server = raw_server()
    fails_with(server, hf.WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(),
               ErrorCode.FLOW_CONTROL_ERROR)


# -- stream states ----------------------------------------------------------------------------


@pytest.mark.parametrize("data, code", [
    (headers_frame(2, REQUEST), ErrorCode.PROTOCOL_ERROR),                 # even: server's ids
    (hf.DataFrame(5, data=b"x").serialize(), ErrorCode.PROTOCOL_ERROR),   # idle stream
    (hf.RstStreamFrame(5).serialize(), ErrorCode.PROTOCOL_ERROR),
    (hf.WindowUpdateFrame(5, window_increment=1).serialize(), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
    (hf.PushPromiseFrame(1, promised_stream_id=2, flags=("END_HEADERS",)).serialize(),
     ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.PING, 0, 0, b"1234567"), ErrorCode.FRAME_SIZE_ERROR),
    (raw_frame(h2_engine.PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.SETTINGS, 0, 0, b"12345"), ErrorCode.FRAME_SIZE_ERROR),
    (raw_frame(h2_engine.SETTINGS, 1, 0, b"123456"), ErrorCode.FRAME_SIZE_ERROR),  # ACK
    (raw_frame(h2_engine.SETTINGS, 0, 1), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.RST_STREAM, 0, 0, b"\0\0\0\0"), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.RST_STREAM, 0, 1, b"\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
    (raw_frame(h2_engine.WINDOW_UPDATE, 0, 0, b"\0\0\1"), ErrorCode.FRAME_SIZE_ERROR),
    (raw_frame(h2_engine.PRIORITY, 0, 0, b"\0\0\0\1\0"), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.GOAWAY, 0, 0, b"\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
    (raw_frame(h2_engine.HEADERS, 0x8 | 0x4, 1, b"\x05ab"), ErrorCode.PROTOCOL_ERROR),  # pad
    (hf.SettingsFrame(0, settings={2: 2}).serialize(), ErrorCode.PROTOCOL_ERROR),
    (hf.SettingsFrame(0, settings={5: 100}).serialize(), ErrorCode.PROTOCOL_ERROR),
    (hf.SettingsFrame(0, settings={4: 2**31}).serialize(), ErrorCode.FLOW_CONTROL_ERROR),
    # every entry is checked, not only the last value of each setting (§6.5.3)
    (raw_frame(h2_engine.SETTINGS, 0, 0, struct.pack(">HIHI", 4, 2**31, 4, 100)),
     ErrorCode.FLOW_CONTROL_ERROR),
    (raw_frame(h2_engine.SETTINGS, 0, 0, struct.pack(">HIHI", 2, 5, 2, 0)),
     ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.SETTINGS, 0, 0, struct.pack(">HIHI", 5, 10, 5, 16384)),
     ErrorCode.PROTOCOL_ERROR),
    (headers_frame(1, REQUEST, flags=()) + hf.PingFrame(0).serialize(),
     ErrorCode.PROTOCOL_ERROR),                                           # interrupted block
    (hf.ContinuationFrame(1, flags=("END_HEADERS",)).serialize(), ErrorCode.PROTOCOL_ERROR),
    (raw_frame(h2_engine.HEADERS, 0x5, 1, b"\xff\xff\xff"), ErrorCode.COMPRESSION_ERROR),
])
def test_connection_errors(data, code):
    fails_with(raw_server(), data, code)


def test_a_frame_over_the_maximum_size_is_refused_from_its_header_alone():
    header_only = raw_frame(h2_engine.DATA, 0, 1)[:9].replace(b"\0\0\0", b"\1\0\0", 1)
    fails_with(raw_server(), header_only, ErrorCode.FRAME_SIZE_ERROR)      # a 16 MB DATA


def test_an_endless_header_block_is_cut_at_the_cap():
    server = raw_server(header_block_cap=70_000)
    server.receive_data(headers_frame(1, REQUEST, flags=()))
    piece = hf.ContinuationFrame(1, data=b"\x00" * 16384).serialize()
    server.receive_data(piece * 4)
    fails_with(server, piece, ErrorCode.ENHANCE_YOUR_CALM)


def test_data_on_a_stream_that_ended_is_stream_closed():
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    events = server.receive_data(hf.DataFrame(1, data=b"x").serialize())
    assert [(type(e), e.error_code) for e in events] == [(StreamReset, ErrorCode.STREAM_CLOSED)]
    server.data_to_send()
    # ...and once the response has ended it too, anything but PRIORITY, WINDOW_UPDATE or
    # RST_STREAM on it ends the connection
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    server.send_headers(1, [(b":status", b"204")], end_stream=True)
    server.data_to_send()
    assert server.receive_data(hf.WindowUpdateFrame(1, window_increment=5).serialize() +
                               hf.RstStreamFrame(1).serialize() +
                               hf.PriorityFrame(1, depends_on=0).serialize()) == []
    fails_with(server, hf.DataFrame(1, data=b"x").serialize(), ErrorCode.STREAM_CLOSED)


def test_frames_after_our_reset_are_ignored_but_their_data_still_counts():
    server = raw_server(connection_window=65535)
    server.receive_data(headers_frame(1, POST))
    server.reset_stream(1, ErrorCode.REFUSED_STREAM)
    assert rst_codes(server.data_to_send()) == {1: ErrorCode.REFUSED_STREAM}
    late = hf.DataFrame(1, data=b"x" * 16384).serialize()
    assert server.receive_data(late * 4) == []          # 64 KiB: the connection window
    updates = frames_of(server.data_to_send())
    assert sum(f.window_increment for f in updates if f.stream_id == 0) == 4 * 16384
    with pytest.raises(StreamClosed):
        server.reset_stream(1)


def test_a_client_reset_ends_the_stream():
    server, client = client_pair()
    client.send_headers(1, POST)
    server.receive_data(client.data_to_send())
    client.reset_stream(1, error_code=8)
    (event,) = server.receive_data(client.data_to_send())
    assert (type(event), event.stream_id, event.error_code, event.remote) == (
        StreamReset, 1, 8, True)
    with pytest.raises(StreamClosed):
        server.send_headers(1, [(b":status", b"200")])


def test_priority_frames_are_advice_except_a_self_dependency():
    server = raw_server()
    assert server.receive_data(hf.PriorityFrame(9, depends_on=0).serialize()) == []
    (event,) = server.receive_data(headers_frame(1, REQUEST))
    server.receive_data(hf.PriorityFrame(1, depends_on=1).serialize())
    assert rst_codes(server.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}


def test_a_refused_header_block_still_feeds_the_hpack_table():
    """Stream 1's fields enter the client's dynamic table; stream 3 refers to them."""
    server = raw_server()
    encoder = hpack.Encoder()
    fields = REQUEST + [(b"x-custom", b"remembered")]
    first = hf.HeadersFrame(1, flags=("END_HEADERS", "END_STREAM", "PRIORITY"),
                            depends_on=1)                # depends on itself: refused
    first.data = encoder.encode(fields)
    assert [type(e) for e in server.receive_data(first.serialize())] == []
    assert rst_codes(server.data_to_send()) == {1: ErrorCode.PROTOCOL_ERROR}
    (event,) = server.receive_data(headers_frame(3, fields, encoder=encoder,
                                                 flags=("END_HEADERS", "END_STREAM")))
    assert [tuple(h) for h in event.headers] == fields


def test_ping_is_answered_and_goaway_is_reported():
    server = raw_server()
    assert server.receive_data(hf.PingFrame(0, opaque_data=b"12345678").serialize()) == []
    (pong,) = frames_of(server.data_to_send())
    assert "ACK" in pong.flags and pong.opaque_data == b"12345678"
    (event,) = server.receive_data(hf.GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    assert isinstance(event, h2_engine.ConnectionTerminated)


def test_unknown_frame_types_are_ignored():
    server = raw_server()
    assert server.receive_data(struct.pack(">IBI", 3 << 8 | 0x42, 0, 1) + b"abc") == []


def test_after_our_goaway_later_streams_are_ignored_whole():
    """RFC 9113 §6.8: streams above the GOAWAY's last-stream-id are ignored (their header
    blocks still decoded, their DATA credited), and a later GOAWAY never names more."""
    server, client = client_pair(connection_window=65535)
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.close_connection()
    (goaway,) = frames_of(server.data_to_send())
    assert goaway.last_stream_id == 1
    client.send_headers(3, POST)
    for _ in range(4):                       # the whole connection window, 4 × 16,383
        client.send_data(3, b"x" * 16383)
    client.send_headers(3, [(b"x-trailer", b"1")], end_stream=True)
    client.send_headers(5, REQUEST, end_stream=True)
    assert server.receive_data(client.data_to_send()) == []
    credit = [f.window_increment for f in frames_of(server.data_to_send())
              if isinstance(f, hf.WindowUpdateFrame) and f.stream_id == 0]
    assert credit == [16383] * 4                # given back a quarter window at a time


def test_a_second_goaway_never_names_a_later_stream():
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    server.close_connection()
    server.data_to_send()
    with pytest.raises(ConnectionFailure):
        server.receive_data(raw_frame(h2_engine.PUSH_PROMISE, 0, 1, b"\0\0\0\2"))
    (goaway,) = frames_of(server.data_to_send())
    assert goaway.last_stream_id == 1 and goaway.error_code == ErrorCode.PROTOCOL_ERROR


def test_a_connection_error_does_not_count_the_streams_its_input_opened():
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    with pytest.raises(ConnectionFailure):
        server.receive_data(headers_frame(3, REQUEST, flags=("END_HEADERS", "END_STREAM")) +
                            raw_frame(h2_engine.PING, 0, 0, b"short"))
    (goaway,) = frames_of(server.data_to_send())
    assert goaway.last_stream_id == 1       # stream 3 was never handed on: retry it


def test_an_empty_end_of_stream_needs_no_window():
    """RFC 9113 §6.9.2: a SETTINGS change can make a window negative; an empty DATA frame
    with END_STREAM is still allowed (§6.9.1 counts only the payload)."""
    server, client = client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"x" * 16384)
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    server.receive_data(client.data_to_send())
    assert server.local_flow_control_window(1) < 0
    server.end_stream(1)
    assert server.open_streams == 0


def test_settings_apply_once_per_frame_and_table_size_churn_stays_small():
    """A SETTINGS frame of 2,730 alternating HEADER_TABLE_SIZE entries must not queue
    thousands of table size updates (RFC 7541 §4.2: at most two per header block)."""
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    churn = b"".join(struct.pack(">HI", 1, i % 2) for i in range(2730))
    for _ in range(20):
        server.receive_data(raw_frame(h2_engine.SETTINGS, 0, 0, churn))
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    (_ack, *_, head) = frames_of(server.data_to_send())
    assert len(head.data) <= 3                      # size update to 0, :status 200
    assert hpack.Decoder().decode(head.data) == [(":status", "200")]


@pytest.mark.parametrize("frames, updates", [
    ([[0, 4096]], b"\x20\x3f\xe1\x1f"),       # smallest, then final (RFC 7541 §4.2)
    ([[0], [0]], b"\x20"),                     # the same value twice: still signalled
    ([[100], [50], [4096]], b"\x3f\x13\x3f\xe1\x1f"),
])
def test_table_size_settings_are_signalled_as_rfc_7541_asks(frames, updates):
    server, client = client_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    for sizes in frames:
        payload = b"".join(struct.pack(">HI", 1, size) for size in sizes)
        server.receive_data(raw_frame(h2_engine.SETTINGS, 0, 0, payload))
    server.data_to_send()
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    (head,) = frames_of(server.data_to_send())
    assert head.data == updates + b"\x88"


def test_ping_and_priority_rules_on_idle_streams():
    """RST_STREAM may not name an idle stream (§6.4): a malformed PRIORITY there is a
    connection error; on a closed stream it is ignored."""
    fails_with(raw_server(), raw_frame(h2_engine.PRIORITY, 0, 9, b"\0\0\0\0"),
               ErrorCode.FRAME_SIZE_ERROR)
    fails_with(raw_server(), raw_frame(h2_engine.PRIORITY, 0, 9, b"\0\0\0\x09\0"),
               ErrorCode.PROTOCOL_ERROR)
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=("END_HEADERS", "END_STREAM")))
    server.send_headers(1, [(b":status", b"204")], end_stream=True)
    server.data_to_send()
    assert server.receive_data(raw_frame(h2_engine.PRIORITY, 0, 1, b"\0\0\0\0")) == []
    assert server.data_to_send() == b""


def test_nothing_to_acknowledge_sends_no_window_update():
    server = raw_server(initial_window=65535)
    server.receive_data(headers_frame(1, POST))
    server.receive_data(hf.DataFrame(1, data=b"x" * 16384).serialize() * 3 +
                        hf.DataFrame(1, data=b"x" * 16383).serialize())
    server.acknowledge_received_data(0, 1)
    assert server.data_to_send() == b""


def test_data_the_client_sent_before_its_own_reset_arrived_is_ignored():
    server = raw_server()
    server.receive_data(headers_frame(1, POST))
    server.receive_data(hf.RstStreamFrame(1, error_code=8).serialize())
    assert server.receive_data(hf.DataFrame(1, data=b"late").serialize()) == []


@pytest.mark.parametrize("frame, code", [
    (raw_frame(h2_engine.DATA, 0x8, 1), ErrorCode.FRAME_SIZE_ERROR),          # no pad length
    (raw_frame(h2_engine.HEADERS, 0x8 | 0x20 | 0x4, 1, b"\x03\0\0\0\0\x10"),
     ErrorCode.PROTOCOL_ERROR),                              # padding eats the priority
    (raw_frame(h2_engine.HEADERS, 0x20 | 0x4, 1, b"\0\0\0"), ErrorCode.FRAME_SIZE_ERROR),
])
def test_padding_and_priority_fields_that_do_not_fit(frame, code):
    server = raw_server()
    if frame[3] == h2_engine.DATA:
        server.receive_data(headers_frame(1, POST))
    fails_with(server, frame, code)


def test_a_header_block_in_too_many_continuation_frames_is_cut():
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, flags=()))
    empty = hf.ContinuationFrame(1).serialize()
    server.receive_data(empty * h2_engine.MAX_CONTINUATIONS)
    fails_with(server, empty, ErrorCode.ENHANCE_YOUR_CALM)


# -- any bytes at all -------------------------------------------------------------------------

_EVENT_TYPES = (RequestReceived, DataReceived, TrailersReceived, StreamReset, WindowUpdated,
                h2_engine.ConnectionTerminated)
_VALID_BLOCK = hpack.Encoder().encode(REQUEST)

frame_strategy = st.builds(
    raw_frame,
    kind=st.integers(0, 11),
    flags=st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x9, 0x20, 0x25, 0x2D, 0xFF]),
    stream_id=st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1]),
    payload=st.one_of(st.binary(max_size=40), st.just(_VALID_BLOCK),
                      st.just(b"\x00\x00\x00\x01"), st.just(b"\x00" * 8)),
)


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(frame_strategy, max_size=12), split=st.integers(1, 64))
def test_any_frames_give_events_or_a_connection_error(frames, split):
    """Whatever a client sends, the engine answers with events or a connection error
    (GOAWAY queued), never another exception, and its windows stay consistent."""
    server = raw_server(connection_window=65535, initial_window=65535)
    data = b"".join(frames)
    try:
        for start in range(0, len(data), split):
            events = server.receive_data(data[start:start + split])
            assert all(isinstance(event, _EVENT_TYPES) for event in events)
            assert 0 <= server._recv_window <= 65535
            for stream in server._streams.values():
                assert stream.recv_window <= 65535
    except ConnectionFailure:
        assert server.terminated
        assert isinstance(frames_of(server.data_to_send())[-1], hf.GoAwayFrame)


def test_may_receive_says_whether_flow_control_lets_the_client_send():
    """The stalled-body check asks this: a body the client cannot send (the connection
    window is full of another stream's unread DATA) is not the client's stall."""
    server, client = client_pair(initial_window=65_535, connection_window=65_535)
    client.send_headers(1, POST)
    client.send_headers(3, POST)
    server.receive_data(client.data_to_send())
    assert server.may_receive(1) and server.may_receive(3)
    client.send_data(1, b"x" * 16_384)
    client.send_data(1, b"x" * 16_384)
    client.send_data(1, b"x" * 16_384)
    client.send_data(1, b"x" * 16_383)
    server.receive_data(client.data_to_send())      # 65,535 bytes on stream 1, unread
    assert not server.may_receive(3)                # the connection window is closed
    server.acknowledge_received_data(65_535, 1)
    assert server.may_receive(3)
    client.end_stream(3)
    server.receive_data(client.data_to_send())
    assert not server.may_receive(3)                # ended: nothing more may come
