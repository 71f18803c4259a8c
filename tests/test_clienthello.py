"""The sans-IO ClientHello reader, fed real ClientHellos from Python's ssl module."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tlsclients import client_hello, record, reframe, split_records

from tlsgate.tls.clienthello import ClientHelloReader, NotTLS

HANDSHAKE = 22
TLS10 = b"\x03\x01"

# (server name sent, TLS version cap): one ClientHello of each kind, made once.
HELLO_KINDS = [("localhost", "1.3"), ("localhost", "1.2"), ("a.gw.localhost", "1.3"),
               (None, "1.3"), (None, "1.2")]
HELLOS = {kind: client_hello(kind[0], max_version=kind[1]) for kind in HELLO_KINDS}
ids = [f"{name or 'no-sni'}-tls{version}" for name, version in HELLO_KINDS]


def feed_all(chunks) -> ClientHelloReader:
    reader = ClientHelloReader()
    for chunk in chunks:
        reader.feed(chunk)
    return reader


@pytest.mark.parametrize("kind", HELLO_KINDS, ids=ids)
def test_whole_hello(kind):
    wire = HELLOS[kind]
    reader = ClientHelloReader()
    assert reader.feed(wire) is True
    assert reader.complete and not reader.malformed
    assert reader.server_name == kind[0]
    assert bytes(reader.buffered) == wire


def test_stdlib_sends_no_sni_for_ip_addresses():
    # What a client connecting to https://127.0.0.1 sends: no server_name extension.
    reader = feed_all([client_hello("127.0.0.1")])
    assert reader.complete and not reader.malformed and reader.server_name is None


@pytest.mark.parametrize("kind", HELLO_KINDS, ids=ids)
def test_one_byte_feeds(kind):
    wire = HELLOS[kind]
    reader = ClientHelloReader()
    for i in range(len(wire) - 1):
        assert reader.feed(wire[i:i + 1]) is False, f"complete after {i + 1} bytes"
    assert reader.feed(wire[-1:]) is True
    assert not reader.malformed
    assert reader.server_name == kind[0]
    assert bytes(reader.buffered) == wire


@pytest.mark.parametrize("kind", HELLO_KINDS, ids=ids)
@pytest.mark.parametrize("cut", [1, 3, 4, 40, -1])
def test_hello_split_over_two_records(kind, cut):
    wire = HELLOS[kind]
    fragment_length = len(split_records(wire)[0][2])
    two = reframe(wire, cut % fragment_length)
    first_record_end = 5 + cut % fragment_length
    reader = ClientHelloReader()
    assert reader.feed(two[:first_record_end]) is False
    assert reader.feed(two[first_record_end:]) is True
    assert not reader.malformed
    assert reader.server_name == kind[0]
    assert bytes(reader.buffered) == two          # handed to OpenSSL unchanged


def test_two_records_in_one_byte_feeds():
    two = reframe(HELLOS[("localhost", "1.3")], 10)
    reader = feed_all(two[i:i + 1] for i in range(len(two)))
    assert reader.complete and not reader.malformed and reader.server_name == "localhost"


def test_bytes_after_the_hello_are_kept():
    wire = HELLOS[("localhost", "1.3")]
    extra = b"\x14\x03\x03\x00\x01\x01"           # e.g. a ChangeCipherSpec in the same read
    reader = feed_all([wire + extra])
    assert reader.complete and reader.server_name == "localhost"
    assert bytes(reader.buffered) == wire + extra
    assert reader.feed(b"more") is True           # finished: further feeds change nothing
    assert bytes(reader.buffered) == wire + extra


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"G", b"POST /"])
def test_plain_http_is_not_tls(data):
    with pytest.raises(NotTLS) as caught:
        ClientHelloReader().feed(data)
    assert caught.value.looks_like_http is True


@pytest.mark.parametrize("data", [b"\x00\x01\x02", b"\x80\x2e\x01\x03\x01",   # SSLv2 hello
                                  b"\x17\x03\x03\x00\x10", b"\r\n", b"\xff" * 20])
def test_other_bytes_are_not_tls(data):
    with pytest.raises(NotTLS) as caught:
        ClientHelloReader().feed(data)
    assert caught.value.looks_like_http is False


def malformed(chunks) -> ClientHelloReader:
    reader = feed_all(chunks)
    assert reader.complete and reader.malformed
    return reader


def test_junk_after_a_valid_record_header():
    junk = bytes(range(100, 140))
    reader = malformed([record(HANDSHAKE, TLS10, junk)])     # first handshake byte 100: no hello
    assert bytes(reader.buffered) == record(HANDSHAKE, TLS10, junk)
    assert reader.server_name is None


def test_client_hello_whose_body_is_garbage():
    body = b"\x03\x03" + b"\x00" * 10                         # stops inside the random
    malformed([record(HANDSHAKE, TLS10, b"\x01" + len(body).to_bytes(3, "big") + body)])


def test_truncated_extensions():
    wire = HELLOS[("localhost", "1.3")]
    [(_, version, fragment)] = split_records(wire)
    # Keep the handshake header's length consistent but cut the body in the extensions.
    body = fragment[4:len(fragment) - 30]
    malformed([record(HANDSHAKE, version, b"\x01" + len(body).to_bytes(3, "big") + body)])


def test_server_name_that_is_not_ascii():
    name = "bücher.localhost".encode()
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    sni = struct.pack("!HH", 0, len(entry) + 2) + struct.pack("!H", len(entry)) + entry
    body = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack("!H", len(sni)) + sni)
    reader = malformed([record(HANDSHAKE, TLS10, b"\x01" + len(body).to_bytes(3, "big") + body)])
    assert reader.server_name is None


def test_a_second_record_that_is_not_handshake():
    malformed([record(HANDSHAKE, TLS10, b"\x01\x00\x01\x00"), record(23, TLS10, b"data")])


def test_an_empty_record():
    malformed([record(HANDSHAKE, TLS10, b"")])


def test_incomplete_hello_is_not_complete():
    wire = HELLOS[("localhost", "1.3")]
    reader = feed_all([wire[:-1]])
    assert not reader.complete


def test_endless_hello_is_cut_off():
    # A ClientHello that claims 16 MB: the reader stops buffering at 64 KiB.
    reader = ClientHelloReader()
    reader.feed(record(HANDSHAKE, TLS10, b"\x01\xff\xff\xff"))
    chunk = record(HANDSHAKE, TLS10, b"\x00" * 16000)
    while not reader.feed(chunk):
        assert len(reader.buffered) < 70000
    assert reader.malformed


def test_tiny_records_cost_linear_time():
    # 64 KiB of 1-byte handshake records, one record per feed: a client may dribble them
    # for the whole handshake timeout, and each feed must not re-walk all earlier records.
    reader = ClientHelloReader()
    reader.feed(record(HANDSHAKE, TLS10, b"\x01\xff\xff\xff"))
    one = record(HANDSHAKE, TLS10, b"\x00")
    started = time.perf_counter()
    while not reader.feed(one):
        assert time.perf_counter() - started < 2.0, f"{len(reader.buffered)} bytes read so far"
    assert reader.malformed


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_raise_nothing_but_not_tls(chunks):
    reader = ClientHelloReader()
    fed = b""
    for chunk in chunks:
        was_complete = reader.complete
        try:
            reader.feed(chunk)
        except NotTLS:
            # Only the very first byte decides, and only a non-handshake byte is refused.
            assert fed == b"" and chunk[:1] != b"\x16"
            return
        if not was_complete:
            fed += chunk
    assert bytes(reader.buffered) == fed          # everything kept for OpenSSL, unchanged
    if reader.complete and not reader.malformed:
        assert reader.server_name is None or isinstance(reader.server_name, str)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6), st.integers(0, 2 ** 16 - 1))
def test_arbitrary_bytes_behind_a_handshake_header(chunks, length):
    # Starting like TLS gets past the first-byte check: the parser proper must then cope.
    reader = ClientHelloReader()
    reader.feed(b"\x16\x03\x01" + struct.pack("!H", length))
    for chunk in chunks:
        reader.feed(chunk)
    assert reader.server_name is None or isinstance(reader.server_name, str)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(HELLO_KINDS), st.data())
def test_any_split_of_a_real_hello(kind, data):
    wire = HELLOS[kind]
    cuts = sorted(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10, unique=True)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    reader = feed_all(pieces)
    assert reader.complete and not reader.malformed
    assert reader.server_name == kind[0]
    assert bytes(reader.buffered) == wire


def _as_the_session_reads(pieces) -> tuple:
    """Feed until complete, as TLSSession does (bytes after that go to OpenSSL directly);
    what it knows then, and everything OpenSSL gets."""
    reader = ClientHelloReader()
    rest = b""
    for piece in pieces:
        if reader.complete:
            rest += piece
        else:
            reader.feed(piece)
    return reader.complete, reader.malformed, reader.server_name, bytes(reader.buffered) + rest


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HELLO_KINDS), st.data())
def test_a_hello_read_in_one_piece_reads_as_one_fed_byte_by_byte(kind, data):
    # One read holding the whole first record takes a shortcut (no joining of records):
    # it must judge every input, damaged ones too, exactly as the byte-by-byte path does.
    wire = bytearray(HELLOS[kind] + data.draw(st.binary(max_size=20)))
    for _ in range(data.draw(st.integers(0, 3))):
        position = data.draw(st.integers(1, len(wire) - 1))   # the first byte stays 22
        wire[position] = data.draw(st.integers(0, 255))
    wire = bytes(wire)
    whole = _as_the_session_reads([wire])
    assert whole == _as_the_session_reads(wire[i:i + 1] for i in range(len(wire)))
    assert whole[3] == wire
