"""HTTP/2 header blocks: the one-pass request checks and the table-free response encoder.

The checks are compared with h2's own inbound validation (the oracle they replace): every
block h2 refuses is refused here too; what is refused beyond h2 is one of the documented
stricter rules. End to end, a malformed request costs only its stream (RST_STREAM
PROTOCOL_ERROR) and the connection goes on serving.
"""

from __future__ import annotations

import itertools

import h2.errors
import h2.exceptions
import h2.utilities
import hpack
import pytest
from httpclients import H2Client, H2Stream

from tlsgate.http import h2_fields
from tlsgate.http.h2_fields import (
    MalformedHeaders,
    ResponseFieldEncoder,
    read_request,
    request_problem,
    trailer_problem,
)

pytestmark = pytest.mark.usefixtures("no_tracebacks")

GOOD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.com"),
        (b":path", b"/a?b=c")]

# Each entry turns the good block into another one.
MUTATIONS = {
    "as is": lambda h: h,
    "host equal to :authority": lambda h: [*h, (b"host", b"example.com")],
    "host only": lambda h: [f for f in h if f[0] != b":authority"] + [(b"host", b"x")],
    "te trailers": lambda h: [*h, (b"te", b"Trailers")],
    "empty value": lambda h: [*h, (b"x-empty", b"")],
    "utf-8 value": lambda h: [*h, (b"x-name", "Zoë".encode())],
    "inner spaces": lambda h: [*h, (b"x-a", b"a  b\tc")],
    "OPTIONS *": lambda h: [(b":method", b"OPTIONS"), *h[1:3], (b":path", b"*")],
    "CONNECT": lambda h: [(b":method", b"CONNECT"), (b":authority", b"example.com:443")],
    "uppercase name": lambda h: [*h, (b"X-Up", b"1")],
    "space in name": lambda h: [*h, (b"x a", b"1")],
    "colon in name": lambda h: [*h, (b"x:a", b"1")],
    "empty name": lambda h: [*h, (b"", b"1")],
    "non-token name": lambda h: [*h, (b"x(a)", b"1")],
    "DEL in name": lambda h: [*h, (b"x\x7f", b"1")],
    "NUL in value": lambda h: [*h, (b"x-a", b"a\x00b")],
    "CR in value": lambda h: [*h, (b"x-a", b"a\rb")],
    "LF in value": lambda h: [*h, (b"x-a", b"a\nb")],
    "leading space": lambda h: [*h, (b"x-a", b" a")],
    "trailing tab": lambda h: [*h, (b"x-a", b"a\t")],
    "te gzip": lambda h: [*h, (b"te", b"gzip")],
    "connection": lambda h: [*h, (b"connection", b"close")],
    "keep-alive": lambda h: [*h, (b"keep-alive", b"5")],
    "proxy-connection": lambda h: [*h, (b"proxy-connection", b"x")],
    "transfer-encoding": lambda h: [*h, (b"transfer-encoding", b"chunked")],
    "upgrade": lambda h: [*h, (b"upgrade", b"h2c")],
    "two :path": lambda h: [*h, (b":path", b"/b")],
    "pseudo after regular": lambda h: [*h[:3], (b"x-a", b"1"), h[3]],
    "unknown pseudo": lambda h: [*h, (b":foo", b"1")],
    ":status in a request": lambda h: [*h, (b":status", b"200")],
    ":protocol without CONNECT": lambda h: [*h, (b":protocol", b"websocket")],
    "no :method": lambda h: h[1:],
    "no :scheme": lambda h: [h[0], *h[2:]],
    "no :path": lambda h: h[:3],
    "empty :path": lambda h: [*h[:3], (b":path", b"")],
    "relative :path": lambda h: [*h[:3], (b":path", b"a/b")],
    "* without OPTIONS": lambda h: [*h[:3], (b":path", b"*")],
    "method not a token": lambda h: [(b":method", b"G T"), *h[1:]],
    "CONNECT with :path": lambda h: [(b":method", b"CONNECT"), *h[2:]],
    "no :authority nor host": lambda h: [f for f in h if f[0] != b":authority"],
    "host differs": lambda h: [*h, (b"host", b"other.example")],
    "two hosts": lambda h: [*h, (b"host", b"example.com"), (b"host", b"example.com")],
}

# Refused here although h2 accepts them (the forwarding rules in h2_fields' docstring).
STRICTER = {"non-token name", "relative :path", "* without OPTIONS", "method not a token"}


def h2_refuses(headers, *, trailer: bool = False) -> bool:
    flags = h2.utilities.HeaderValidationFlags(
        is_client=False, is_trailer=trailer, is_response_header=False, is_push_promise=False)
    try:
        list(h2.utilities.validate_headers(headers, flags))
    except h2.exceptions.ProtocolError:
        return True
    return False


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_request_checks_refuse_what_h2_refuses(name):
    headers = MUTATIONS[name](list(GOOD))
    ours = request_problem(headers)
    if h2_refuses(headers):
        assert ours is not None, name
    elif name in STRICTER:
        assert ours is not None, name
    else:
        assert ours is None, (name, ours)


def test_pairs_of_mutations_agree_with_h2_too():
    """Two faults at once: still refused whenever h2 refuses (no fault hides another)."""
    faults = [n for n in MUTATIONS if n not in STRICTER and h2_refuses(MUTATIONS[n](GOOD))]
    for first, second in itertools.combinations(faults, 2):
        headers = MUTATIONS[second](MUTATIONS[first](list(GOOD)))
        assert not h2_refuses(headers) or request_problem(headers) is not None, (first, second)


@pytest.mark.parametrize("fields, refused", [
    ([(b"x-checksum", b"abc"), (b"server-timing", b"db;dur=5")], False),
    ([(b":path", b"/")], True),
    ([(b"X-Up", b"1")], True),
    ([(b"connection", b"close")], True),
    ([(b"x-a", b"a\nb")], True),
    ([(b"te", b"gzip")], True),
])
def test_trailer_checks(fields, refused):
    assert (trailer_problem(fields) is not None) == refused
    assert h2_refuses(fields, trailer=True) == refused


@pytest.mark.parametrize("values", [
    [b"abc"], [b"-5"], [b"+5"], [b"5_0"], [b" 5"], [b"5", b"6"], [b"9" * 19], [b"\xd9\xa5"],
])
def test_content_length_must_be_digits_and_agree_with_itself(values):
    """RFC 9110 §8.6: 1*DIGIT (int() would take "+5", "5_0" and Arabic-Indic digits)."""
    fields = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a"),
              (b":path", b"/"), *[(b"content-length", v) for v in values]]
    with pytest.raises(MalformedHeaders, match="(?i)content-length"):
        read_request(fields)
    assert read_request(fields[:4] + [(b"content-length", b"5")] * 2).content_length == 5


def test_read_request_gives_what_the_adapter_needs():
    head = h2_fields.read_request([*GOOD, (b"content-length", b"12"), (b"x-a", b"1")])
    assert (head.method, head.path, head.authority) == (b"GET", b"/a?b=c", b"example.com")
    assert head.fields == [(b"content-length", b"12"), (b"x-a", b"1")]
    assert head.content_length == 12
    # Measured as HTTP/1.1 measures "GET /a?b=c HTTP/1.1" + "host: example.com" + fields.
    assert head.head_size == len(b"GET") + len(b"/a?b=c") + 12 + sum(
        len(n) + len(v) + 4 for n, v in [(b"host", b"example.com"), *head.fields])
    host_only = h2_fields.read_request([*GOOD[:2], GOOD[3], (b"host", b"h.example")])
    assert host_only.authority == b"h.example"


def test_remembered_fields_are_only_the_good_ones():
    good, bad = (b"x-fine", b"ok"), (b"x-bad", b" padded")
    for _ in range(2):       # the second time a remembered field is skipped, a bad one is not
        assert request_problem([*GOOD, good]) is None
        assert request_problem([*GOOD, bad]) == "illegal value in field 'x-bad'"
    assert good in h2_fields._checked_fields and bad not in h2_fields._checked_fields


def test_problems_name_the_fault():
    assert request_problem([*GOOD, (b"host", b"x")]) == ":authority and Host differ"
    assert request_problem(GOOD[1:]) == "no :method"
    assert "connection-specific" in request_problem([*GOOD, (b"upgrade", b"h2c")])


# -- the response encoder ------------------------------------------------------------------------

RESPONSE = [(b":status", b"200"), (b"server", b"tlsgate"),
            (b"content-type", b"application/json"), (b"content-length", b"1234"),
            (b"x-custom", b"some value"), (b"set-cookie", "ü=1".encode())]


def test_encoded_heads_decode_to_the_same_fields_every_time():
    decoder = hpack.Decoder()
    encoder = ResponseFieldEncoder()
    first = encoder.encode(RESPONSE)
    for _ in range(3):         # memoized fields, and the decoder's table never used
        block = encoder.encode(RESPONSE)
        assert block == first
        assert decoder.decode(block, raw=True) == RESPONSE
    assert len(decoder.header_table.dynamic_entries) == 0
    # a fresh encoder (another connection) produces the same bytes
    assert ResponseFieldEncoder().encode(RESPONSE) == first


def test_static_table_fields_are_one_byte_and_the_rest_literal_without_indexing():
    encoder = ResponseFieldEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x88"      # static index 8
    block = encoder.encode([(b"content-type", b"text/plain")])
    assert block[0] == 0x0F and block[1] == 31 - 15   # 4-bit prefix, static name index 31
    block = encoder.encode([(b"x-new", b"v")])
    assert block[0] == 0x00                            # literal name, not indexed


def test_sensitive_fields_are_never_indexed_and_not_memoized():
    encoder = ResponseFieldEncoder()
    secret = hpack.NeverIndexedHeaderTuple(b"authorization", b"Bearer s3cret")
    block = encoder.encode([secret])
    assert block[0] & 0xF0 == 0x10                    # "never indexed" literal
    decoded = hpack.Decoder().decode(block, raw=True)
    assert decoded == [(b"authorization", b"Bearer s3cret")]
    assert not decoded[0].indexable
    assert all(b"s3cret" not in field[1] for field in h2_fields._encoded_fields)


def test_a_table_size_change_from_the_peer_is_signalled_first():
    encoder = ResponseFieldEncoder()
    decoder = hpack.Decoder()
    encoder.header_table_size = 0                     # the peer's SETTINGS_HEADER_TABLE_SIZE
    decoder.max_allowed_table_size = 0
    block = encoder.encode(RESPONSE)
    assert block[0] == 0x20                           # dynamic table size update to 0
    assert decoder.decode(block, raw=True) == RESPONSE
    assert encoder.encode(RESPONSE)[0] != 0x20        # only once


# -- end to end ---------------------------------------------------------------------------------

def _raw_client(gateway, pki) -> H2Client:
    client = H2Client(gateway.port, pki)
    # let this client send what a broken or hostile peer would
    client.conn.config.validate_outbound_headers = False
    client.conn.config.normalize_outbound_headers = False
    client.wait_settings()
    return client


def _send_raw(client: H2Client, headers, *, end_stream: bool = True) -> int:
    stream_id = client.conn.get_next_available_stream_id()
    client.streams[stream_id] = H2Stream()
    client.conn.send_headers(stream_id, headers, end_stream=end_stream)
    client.flush()
    return stream_id


REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
           (":path", "/echo")]


@pytest.mark.parametrize("extra", [
    [("X-Upper", "1")], [("connection", "close")], [("te", "gzip")],
    [("host", "elsewhere")], [("x-a", " padded")],
    [("content-length", "abc")], [("content-length", "9" * 5000)],
    [("content-length", "5")],                     # ...on a request that ends with its head
])
def test_a_malformed_request_resets_its_stream_and_the_connection_goes_on(
        gateway, pki, access_log, extra):
    client = _raw_client(gateway, pki)
    bad = _send_raw(client, REQUEST + extra)
    (stream,) = client.wait(bad)
    assert stream.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert client.get("/echo").status == 200         # same connection
    assert client.goaway is None
    refused, served = access_log(2)
    assert "malformed request" in refused["reason"]
    assert served["status"] == 200
    client.close()


def test_malformed_trailers_reset_the_stream(gateway, pki):
    client = _raw_client(gateway, pki)
    stream_id = _send_raw(client, [(":method", "POST"), *REQUEST[1:]], end_stream=False)
    client.conn.send_data(stream_id, b"body")
    client.conn.send_headers(stream_id, [("connection", "close")], end_stream=True)
    client.flush()
    (stream,) = client.wait(stream_id)
    assert stream.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    good = client.request("POST", "/echo", end_stream=False)
    client.conn.send_data(good, b"body")
    client.conn.send_headers(good, [("x-checksum", "abc")], end_stream=True)
    client.flush()
    (answer,) = client.wait(good)
    assert answer.status == 200 and b'"body_bytes": 4' in bytes(answer.data)
    client.close()


def test_the_gateway_answers_without_the_clients_dynamic_table(gateway, pki):
    client = H2Client(gateway.port, pki)
    first, second = client.get("/echo"), client.get("/echo?size=10")
    assert first.status == second.status == 200
    assert second.headers["content-length"] == "10"
    assert len(client.conn.decoder.header_table.dynamic_entries) == 0
    client.close()


def test_response_fields_are_normalized_checked_and_remembered_only_when_sendable():
    from tlsgate.http import h2 as adapter
    from tlsgate.http.base import ResponseFramingError
    assert adapter._sendable_field((b"X-Trace", b" abc ")) == (b"x-trace", b"abc")
    assert adapter._sendable_field((b"Keep-Alive", b"5")) == ()       # dropped in HTTP/2
    assert adapter._sendable[(b"X-Trace", b" abc ")] == (b"x-trace", b"abc")
    for _ in range(2):
        with pytest.raises(ResponseFramingError):
            adapter._sendable_field((b"x-bad", b"a\nb"))
    assert (b"x-bad", b"a\nb") not in adapter._sendable


def test_field_memos_are_bounded():
    from tlsgate.http.base import FIELD_MEMO_ENTRIES, remember_field
    memo: dict = {}
    remember_field(memo, (b"x-long", b"v" * 300), 1)
    assert memo == {}                                  # long fields are not kept
    for number in range(FIELD_MEMO_ENTRIES + 10):
        remember_field(memo, (b"x-n", b"%d" % number), number)
    assert len(memo) <= FIELD_MEMO_ENTRIES             # emptied when full, then refilled
    assert memo[(b"x-n", b"%d" % (FIELD_MEMO_ENTRIES + 9))] == FIELD_MEMO_ENTRIES + 9
