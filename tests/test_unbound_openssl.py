"""OpenSSL functions found in the cryptography wheel's symbol table (tlsgate.tls.unbound), and
what tlsgate does with them: no chain check by OpenSSL, the number of TLS 1.3 session tickets,
the session cache's size."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from certgen import Issued, forged_dev_client
from gatewayd import write_config
from OpenSSL._util import lib as _lib
from tlsclients import Pair, client_context, make_contexts, s_client, tls_config

from tlsgate.config.errors import ConfigError
from tlsgate.config.loader import config_warnings, load_config
from tlsgate.tls import unbound
from tlsgate.tls.session import ClientCertificateReceived

X509_V_ERR_APPLICATION_VERIFICATION = 50
needs_unbound = pytest.mark.skipif(unbound.load() is None,
                                   reason="this cryptography wheel has no symbol table")


def test_the_wheel_in_use_carries_the_functions():
    # If this fails, a new cryptography wheel dropped its symbol table or changed its layout:
    # tlsgate still works, but every full handshake pays OpenSSL's chain check again and the
    # session_ticket_count / session_cache_size settings are refused.
    assert unbound.load() is not None


# -- reading an ELF symbol table ---------------------------------------------------------------

_STT_OBJECT, _STT_FUNC = 1, 2


def elf_image(strings: bytes, symbols: list[tuple[int, int, int]],
              notes: bytes = b"", note_address: int = 0) -> bytes:
    """A minimal little-endian ELF64 image: a string table, a symbol table of
    ``(name offset, type, value)``, ``notes`` (one PT_NOTE segment, loaded at
    ``note_address``), then the section headers (null, strings, symbols) and the program
    headers."""
    header_size = 64
    table = b"".join(struct.pack("<IBBHQQ", name, kind, 0, 1, value, 0)
                     for name, kind, value in symbols)
    strings_at = header_size
    table_at = strings_at + len(strings)
    notes_at = table_at + len(table)
    body = strings + table + notes
    sections = [bytes(64),
                struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, strings_at, len(strings), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 0, 2, 0, 0, table_at, len(table), 1, 0, 8, 24)]
    programs = [struct.pack("<IIQQQQQQ", 4, 4, notes_at, note_address, note_address,
                            len(notes), len(notes), 4)] if notes else []
    sections_at = header_size + len(body)
    programs_at = sections_at + 64 * len(sections)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 3, 62, 1,
                         0, programs_at, sections_at, 0, header_size, 56, len(programs), 64,
                         len(sections), 0)
    return header + body + b"".join(sections) + b"".join(programs)


def note(kind: int, name: bytes, description: bytes) -> bytes:
    def padded(data: bytes) -> bytes:
        return data + bytes(-len(data) % 4)
    return struct.pack("<III", len(name), len(description), kind) + padded(name) + \
        padded(description)


def test_the_build_id_is_the_gnu_note_of_type_3_in_file_and_memory():
    build_id = bytes(range(20))
    notes = note(5, b"GNU\0", b"property") + note(3, b"XYZ\0", b"other owner") + \
        note(3, b"GNU\0", build_id)
    image = elf_image(b"\0", [], notes, note_address=0x4000)
    headers = unbound.program_headers(image)
    assert unbound.build_id(headers, lambda offset, size: image[offset:offset + size],
                            loaded=False) == build_id
    # Loaded, the notes are at their address, read only inside a readable loaded segment.
    memory = bytearray(0x5000)
    memory[0x4000:0x4000 + len(notes)] = notes

    def read(address: int, size: int) -> bytes:
        return bytes(memory[address:address + size])

    readable = (1, 4, 0, 0, 0x5000, 0x5000, 0x1000)         # PT_LOAD, PF_R, 0..0x5000
    assert unbound.build_id(headers + [readable], read, loaded=True) == build_id
    assert unbound.build_id(headers, read, loaded=True) is None       # in no loaded segment
    too_short = (1, 4, 0, 0, 0x4010, 0x5000, 0x1000)        # file-backed part ends early
    assert unbound.build_id(headers + [too_short], read, loaded=True) is None
    plain = elf_image(b"\0", [])
    assert unbound.build_id(unbound.program_headers(plain), read, loaded=False) is None


_REPLACE_AFTER_IMPORT = """
import os, sys
from cryptography.hazmat.bindings import _rust
from tlsgate.tls import unbound
assert _rust.__file__.startswith(sys.argv[2]), _rust.__file__   # never the real wheel
image = bytearray(open(_rust.__file__, "rb").read())
if sys.argv[1] == "another-build":
    headers = unbound.program_headers(image)
    build_id = unbound.build_id(headers, lambda at, size: bytes(image[at:at + size]),
                                loaded=False)
    image[image.index(build_id)] ^= 1
elif sys.argv[1] == "no-symbol-table":
    image[0x3C:0x3E] = bytes(2)             # no section headers
with open(_rust.__file__ + ".new", "wb") as file:
    file.write(image)
os.replace(_rust.__file__ + ".new", _rust.__file__)   # as an upgrade replaces it
print(unbound.load() is not None)
"""


@pytest.mark.parametrize("replacement, usable", [("same", True), ("another-build", False),
                                                 ("no-symbol-table", False)])
def test_a_wheel_replaced_after_import_is_checked(tmp_path, replacement, usable):
    # A copy of the wheel, imported, then its library file replaced on disk: only the same
    # build may be used (its table is read after the import).
    import cryptography
    shutil.copytree(Path(cryptography.__file__).parent, tmp_path / "cryptography")
    environment = {**os.environ,
                   "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run([sys.executable, "-c", _REPLACE_AFTER_IMPORT, replacement,
                             str(tmp_path)],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(usable)]


def test_symbols_are_found_by_their_exact_name():
    strings = b"\0XSSL_CTX_ctrl\0SSL_free\0twice\0same\0"
    image = elf_image(strings, [
        (1, _STT_FUNC, 0x1000),            # "XSSL_CTX_ctrl": not the name asked for
        (2, _STT_FUNC, 0x2000),            # "SSL_CTX_ctrl", the tail of the string above
        (15, _STT_OBJECT, 0x3000),         # "SSL_free", but data, not a function
        (24, _STT_FUNC, 0x4000), (24, _STT_FUNC, 0x5000),   # "twice", two values
        (30, _STT_FUNC, 0x6000), (30, _STT_FUNC, 0x6000),   # "same", one value twice
    ])
    found = unbound.function_symbols(image, {"SSL_CTX_ctrl", "SSL_free", "twice", "same",
                                             "missing"})
    assert found == {"SSL_CTX_ctrl": 0x2000, "same": 0x6000}


@pytest.mark.parametrize("image", [b"MZ\x90\x00" + bytes(60),
                                   b"\x7fELF\x01\x01\x01" + bytes(57),     # 32-bit
                                   b"\x7fELF\x02\x02\x01" + bytes(57)])    # big-endian
def test_other_binaries_are_refused(image):
    with pytest.raises(ValueError, match="little-endian ELF64"):
        unbound.function_symbols(image, {"SSL_CTX_ctrl"})


# -- OpenSSL does not judge the client's chain -------------------------------------------------


def forged_client(pki: Path, directory: Path, version: str) -> tuple[ssl.SSLContext, Issued]:
    """A client presenting a forged copy of the dev client certificate (+ the intermediate)."""
    forged, chain, key = forged_dev_client(pki, directory)
    ctx = client_context(pki, version=version)
    ctx.load_cert_chain(str(chain), str(key))
    return ctx, forged


def openssl_verdict(pair: Pair) -> int:
    return _lib.SSL_get_verify_result(pair.server._conn._ssl)


@needs_unbound
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_openssl_leaves_a_forged_chain_to_the_policies(tmp_path, pki, version):
    # OpenSSL's own check would find the leaf's signature broken (7, and before that no
    # issuer in its empty store: 20). It never runs: the verdict recorded is "the application
    # decides" (never "OK"). The certificate is still collected for Verify(), and the
    # CertificateVerify proof was still checked.
    ctx, forged = forged_client(pki, tmp_path, version)
    pair = Pair(make_contexts(tmp_path, pki), ctx)
    assert pair.handshake().client_certificate == forged.cert
    assert openssl_verdict(pair) == X509_V_ERR_APPLICATION_VERIFICATION


@needs_unbound
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_late_certificate_is_left_to_the_policies_too(tmp_path, pki, version):
    # Renegotiation (1.2) and post-handshake authentication (1.3) on a hostname that asks
    # for no certificate in the handshake.
    ctx, forged = forged_client(pki, tmp_path, version)
    ctx.post_handshake_auth = True
    pair = Pair(make_contexts(tmp_path, pki), ctx, "open.localhost")
    assert pair.handshake().client_certificate is None
    assert pair.server.request_client_certificate() is None
    for _ in range(5):
        pair.pump()
        with contextlib.suppress(ssl.SSLWantReadError):
            pair.client.read(65536)
    [answer] = [e for e in pair.events if isinstance(e, ClientCertificateReceived)]
    assert answer.certificate == forged.cert
    assert openssl_verdict(pair) == X509_V_ERR_APPLICATION_VERIFICATION


# -- session tickets and the session cache -----------------------------------------------------

REQUEST = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@needs_unbound
@pytest.mark.parametrize("stateless", ["true", "false"])
@pytest.mark.parametrize("count", [0, 1, 3, None])
def test_session_ticket_count(start_gateway, pki, count, stateless):
    setting = f"session_ticket_count = {count}" if count is not None else ""
    gateway = start_gateway(tls_config(f"session_tickets = {stateless}\n{setting}"))
    result = s_client(gateway.port, "-tls1_3", "-msg", "-ign_eof", stdin=REQUEST)
    assert "HTTP/1.1 200 OK" in result.stdout
    tickets = [line for line in result.stdout.splitlines()
               if line.startswith("<<<") and line.endswith("NewSessionTicket")]
    assert len(tickets) == (2 if count is None else count)     # None: OpenSSL's default


@needs_unbound
def test_a_full_session_cache_forgets_its_oldest_session(tmp_path, pki):
    contexts = make_contexts(tmp_path, pki, "session_tickets = false\nsession_ticket_count = 1\n"
                                            "session_cache_size = 1")
    pairs = []          # kept: OpenSSL drops the session of a connection freed unclosed
    for _ in range(2):
        pair = Pair(contexts, client_context(pki, version="1.3", cert="client"))
        pair.handshake()
        pair.client_read()                  # the ticket naming the cached session
        pairs.append(pair)
    newest, oldest = pairs[1], pairs[0]     # newest first: each handshake stores a session
    resumed = [Pair(contexts, pair.client.context, session=pair.client.session)
               .handshake().session_resumed for pair in (newest, oldest)]
    assert resumed == [True, False]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("line, message", [
    ("session_ticket_count = 17", "gateway.session_ticket_count: must be at most 16, got 17"),
    ("session_ticket_count = -1", "gateway.session_ticket_count: must be at least 0, got -1"),
    ("session_cache_size = 0", "gateway.session_cache_size: must be at least 1, got 0"),
    ("session_cache_size = 10000001",
     "gateway.session_cache_size: must be at most 10000000, got 10000001"),
])
def test_out_of_range_settings(tmp_path, pki, line, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, tls_config(line), pki=pki))
    assert [problem.message for problem in caught.value.problems] == [message]


def test_settings_refused_where_the_functions_are_missing(tmp_path, pki, monkeypatch):
    # Stands in for a cryptography wheel without a symbol table (this machine's has one).
    monkeypatch.setattr(unbound, "load", lambda: None)
    path = write_config(tmp_path, tls_config("session_ticket_count = 1"), pki=pki)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problem, = caught.value.problems
    assert problem.message.startswith("gateway.session_ticket_count: this cryptography wheel")
    assert problem.line is not None
    # OpenSSL's defaults need no function: written out, they are accepted.
    load_config(write_config(tmp_path, tls_config("session_ticket_count = 2\n"
                                                  "session_cache_size = 20480"), pki=pki))


def test_a_wheel_without_the_functions_is_worth_a_warning(tmp_path, pki, monkeypatch):
    config = load_config(write_config(tmp_path, tls_config(), pki=pki))
    assert not [w for w in config_warnings(config) if "chain check" in w]
    monkeypatch.setattr(unbound, "load", lambda: None)     # as in the test above
    [warning] = [w for w in config_warnings(config) if "chain check" in w]
    assert "tlsgate/tls/unbound.py" in warning
