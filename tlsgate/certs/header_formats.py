"""Client certificates carried in HTTP header fields.

Behind an L7 load balancer the TLS connection, and so the client certificate, ends at the
balancer, which passes the certificate on in a header (``[forwarded_client_certificate]``);
tlsgate does the same for its own backends (``[upstream_client_certificate]``). No single
encoding won, so the gateway speaks the ones real proxies emit:

``pem``
    PEM on a single line, line breaks replaced by spaces:
    ``-----BEGIN CERTIFICATE----- MIIB... ...= -----END CERTIFICATE-----``. This is what
    Apache's ``RequestHeader set X-Client-Cert "%{SSL_CLIENT_CERT}s"`` sends (mod_headers turns
    CR and LF into spaces). Decoding ignores all whitespace inside the block, so it also reads
    the tab-folded form of nginx's old ``$ssl_client_cert`` and PEM with real line breaks.
``pem-urlencoded``
    Percent-encoded PEM, everything but unreserved characters escaped, as nginx's
    ``$ssl_client_escaped_cert``. Decoding leaves ``+`` alone (it is base64, not a space), so
    it also reads AWS ALB's ``X-Amzn-Mtls-Clientcert``, which does not escape ``+ = /``.
``base64-der``
    Base64 of the DER certificate, as HAProxy's ``%[ssl_c_der,base64]``.
``rfc9440``
    The ``Client-Cert`` field of RFC 9440: a Structured Field byte sequence ``:BASE64-DER:``.
``xfcc``
    Envoy's ``x-forwarded-client-cert``: ``Hash=<sha256 hex>;Subject="<RFC 4514>";Cert="<url-
    encoded PEM>"``, one comma-separated element per proxy.

``pem`` and ``pem-urlencoded`` values may carry a chain after the certificate (AWS ALB does);
the first block is the client's own certificate by TLS convention, and only it is returned.

Every malformed value raises :class:`HeaderCertificateError` with a message saying what is
wrong, never another exception: the value comes from the network and the caller turns the
error into a log line and a null certificate, not a crash. Messages never echo the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from urllib.parse import quote, unquote_to_bytes

from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: ``format`` values of ``[forwarded_client_certificate]`` and ``[upstream_client_certificate]``.
FORMATS = ("pem", "pem-urlencoded", "base64-der", "rfc9440", "xfcc")


class HeaderCertificateError(ValueError):
    """A header value that does not hold a usable certificate; the message says why."""


def encode_certificate(cert: x509.Certificate, fmt: str) -> bytes:
    """The header field value carrying ``cert`` in format ``fmt``: ASCII, on one line."""
    return _ENCODERS[_check_format(fmt)](cert).encode("ascii")


def decode_certificate(value: bytes | str, fmt: str) -> x509.Certificate:
    """The client certificate in header value ``value`` of format ``fmt``.

    Raises :class:`HeaderCertificateError` for any value that does not hold one, and
    ``ValueError`` only for an unknown ``fmt`` (a configuration mistake, not bad input).
    """
    decoder = _DECODERS[_check_format(fmt)]
    return decoder(_header_text(value))


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown certificate header format {fmt!r}; use one of {FORMATS}")
    return fmt


def _header_text(value: bytes | str) -> str:
    """The value as text without surrounding whitespace; header values must be ASCII."""
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise HeaderCertificateError("header value contains non-ASCII bytes") from None
    elif value.isascii():
        text = value
    else:
        raise HeaderCertificateError("header value contains non-ASCII characters")
    text = text.strip()
    if not text:
        raise HeaderCertificateError("header value is empty")
    return text


# -- shared pieces -------------------------------------------------------------------------

_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*=*")


def _b64decode(data: str, what: str, *, require_padding: bool) -> bytes:
    """Strict standard-alphabet base64.

    RFC 8941 asks byte-sequence parsers not to insist on ``=`` padding, and a missing pad
    costs nothing to tolerate, so only PEM (whose syntax is fixed by RFC 7468) requires it.
    """
    if not data:
        raise HeaderCertificateError(f"{what} is empty")
    if not _BASE64_CHARS.fullmatch(data):
        raise HeaderCertificateError(f"{what} is not base64: characters outside A-Z a-z 0-9 + / =")
    if not require_padding:
        data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise HeaderCertificateError(f"{what} is not valid base64: {exc}") from None


def _load_der(der: bytes, what: str) -> x509.Certificate:
    """Parse a DER certificate, turning the parser's errors into ours.

    ``InvalidVersion`` (a version field other than v1/v3) is not a ValueError in
    ``cryptography``, so it is named here; fuzzing found it.
    """
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:
        raise HeaderCertificateError(f"{what} is not a DER X.509 certificate: {exc}") from None


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# -- pem -----------------------------------------------------------------------------------

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]{1,40})-----(.*?)-----END ([A-Z0-9 ]{1,40})-----", re.DOTALL
)


def _encode_pem(cert: x509.Certificate) -> str:
    return _pem(cert).strip().replace("\n", " ")


def _decode_pem(text: str) -> x509.Certificate:
    """The first CERTIFICATE block of ``text``, which must hold nothing but PEM blocks."""
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise HeaderCertificateError(_why_no_pem_block(text))
    _check_nothing_between(text, blocks)
    label, body, end_label = blocks[0].groups()
    if label != end_label:
        raise HeaderCertificateError(f"PEM block begins as {label!r} but ends as {end_label!r}")
    if label != "CERTIFICATE":
        raise HeaderCertificateError(f"expected a CERTIFICATE PEM block, found {label!r}")
    der = _b64decode("".join(body.split()), "PEM body", require_padding=True)
    return _load_der(der, "PEM body")


def _why_no_pem_block(text: str) -> str:
    """Explain a missing PEM block, pointing at the likely configuration mistake."""
    if text == "(null)" or text == "-":
        return f"proxy sent {text!r}: it had no client certificate to forward"
    if "%" in text:
        return "no PEM block found; the value looks percent-encoded (format pem-urlencoded?)"
    if "-----BEGIN" in text:
        return "PEM BEGIN line without a matching END line"
    return "no PEM block found (expected -----BEGIN CERTIFICATE-----)"


def _check_nothing_between(text: str, blocks: list[re.Match[str]]) -> None:
    """Reject text around or between the PEM blocks: it means a mangled value."""
    position = 0
    for block in blocks:
        if text[position : block.start()].strip():
            raise HeaderCertificateError("unexpected text outside the PEM block")
        position = block.end()
    if text[position:].strip():
        raise HeaderCertificateError("unexpected text after the PEM block")


# -- pem-urlencoded ------------------------------------------------------------------------


def _encode_pem_urlencoded(cert: x509.Certificate) -> str:
    return quote(_pem(cert), safe="")


def _decode_pem_urlencoded(text: str) -> x509.Certificate:
    """Percent-decode (``+`` stays ``+``), then read PEM."""
    try:
        pem = unquote_to_bytes(text).decode("ascii")
    except UnicodeDecodeError:
        raise HeaderCertificateError("percent-decoded value is not ASCII") from None
    return _decode_pem(pem)


# -- base64-der ----------------------------------------------------------------------------


def _encode_base64_der(cert: x509.Certificate) -> str:
    return base64.b64encode(_der(cert)).decode("ascii")


def _decode_base64_der(text: str) -> x509.Certificate:
    der = _b64decode(text, "base64-der value", require_padding=False)
    return _load_der(der, "base64-der value")


# -- rfc9440 -------------------------------------------------------------------------------


def _encode_rfc9440(cert: x509.Certificate) -> str:
    return f":{_encode_base64_der(cert)}:"


def _decode_rfc9440(text: str) -> x509.Certificate:
    """Exactly one byte sequence, as RFC 9440 §2.2 defines ``Client-Cert``.

    Structured-field parameters or a list would be legal syntax for other fields but carry
    nothing here; a value with them was not produced by a conforming proxy, so it is refused.
    """
    if len(text) < 2 or text[0] != ":" or text[-1] != ":":
        raise HeaderCertificateError(
            "RFC 9440 Client-Cert must be a byte sequence ':BASE64:' (colon at both ends)"
        )
    inner = text[1:-1]
    if ":" in inner:
        raise HeaderCertificateError("RFC 9440 Client-Cert must hold exactly one byte sequence")
    der = _b64decode(inner, "RFC 9440 byte sequence", require_padding=False)
    return _load_der(der, "RFC 9440 byte sequence")


# -- xfcc ----------------------------------------------------------------------------------

_XFCC_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _encode_xfcc(cert: x509.Certificate) -> str:
    """One XFCC element; Subject and Cert are always quoted, as Envoy writes them."""
    digest = hashlib.sha256(_der(cert)).hexdigest()
    subject = _ascii_rfc4514(cert.subject)
    return f"Hash={digest};Subject={_quote(subject)};Cert={_quote(_encode_pem_urlencoded(cert))}"


def _ascii_rfc4514(name: x509.Name) -> str:
    """RFC 4514 text with non-ASCII characters as ``\\XX`` UTF-8 escapes (RFC 4514 §2.4)."""
    return "".join(
        char if " " <= char <= "~" else "".join(f"\\{byte:02X}" for byte in char.encode())
        for char in name.rfc4514_string()
    )


def _quote(value: str) -> str:
    """An HTTP quoted-string: backslash and double quote escaped with a backslash."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decode_xfcc(text: str) -> x509.Certificate:
    """The Cert of the last element.

    Each proxy appends one element describing the client of its own connection, so the last
    element was written by the nearest proxy, the one ``trusted_proxies`` vouches for. Earlier
    elements were written further away and merely relayed; the certificate is never taken from
    them, even when the last element has none.
    """
    elements = parse_xfcc(text)
    if not elements:
        raise HeaderCertificateError("XFCC value has no elements")
    fields = elements[-1]
    certs = [value for key, value in fields if key.lower() == "cert"]
    if len(certs) != 1:
        problem = "no Cert field" if not certs else "more than one Cert field"
        raise HeaderCertificateError(f"last XFCC element (nearest proxy) has {problem}")
    try:
        cert = _decode_pem_urlencoded(certs[0])
    except HeaderCertificateError as exc:
        raise HeaderCertificateError(f"XFCC Cert field: {exc}") from None
    _check_xfcc_hash(fields, cert)
    return cert


def _check_xfcc_hash(fields: list[tuple[str, str]], cert: x509.Certificate) -> None:
    """When the element states a Hash, it must be the Cert's SHA-256: else it was altered."""
    expected = hashlib.sha256(_der(cert)).hexdigest()
    for key, value in fields:
        if key.lower() == "hash" and value.lower() != expected:
            raise HeaderCertificateError("XFCC Hash does not match the SHA-256 of its Cert")


def parse_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """Split an XFCC value into elements, each a list of ``(key, value)`` pairs in order.

    Pairs are kept as a list rather than a dict because Envoy repeats keys (one ``DNS`` or
    ``URI`` pair per SAN). Quoted values are unescaped; empty elements and pairs are skipped,
    as HTTP list syntax allows.
    """
    elements = []
    for element in _split_unquoted(value, ","):
        pairs = [_xfcc_pair(pair) for pair in _split_unquoted(element, ";") if pair.strip()]
        if pairs:
            elements.append(pairs)
    return elements


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split at ``separator`` where it is not inside a quoted string."""
    parts, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    if quoted:
        raise HeaderCertificateError("XFCC value has an unterminated quoted string")
    parts.append(text[start:])
    return parts


def _xfcc_pair(pair: str) -> tuple[str, str]:
    """``Key=value`` or ``Key="quoted value"``, with optional whitespace around them."""
    key, equals, raw = pair.partition("=")
    key = key.strip()
    if not equals:
        raise HeaderCertificateError("XFCC field without '='")
    if not _XFCC_KEY.fullmatch(key):
        raise HeaderCertificateError("XFCC field has an invalid name")
    raw = raw.strip()
    if raw.startswith('"'):
        return key, _unquote(raw)
    if '"' in raw:
        raise HeaderCertificateError(f"XFCC field {key}: stray double quote in unquoted value")
    return key, raw


def _unquote(raw: str) -> str:
    """The content of a quoted-string that makes up all of ``raw``."""
    chars, index = [], 1
    while index < len(raw) and raw[index] != '"':
        if raw[index] == "\\":
            index += 1
            if index == len(raw):
                break
        chars.append(raw[index])
        index += 1
    if index >= len(raw):
        raise HeaderCertificateError("XFCC value has an unterminated quoted string")
    if index != len(raw) - 1:
        raise HeaderCertificateError("XFCC value has text after a closing quote")
    return "".join(chars)


_ENCODERS: dict[str, Callable[[x509.Certificate], str]] = {
    "pem": _encode_pem,
    "pem-urlencoded": _encode_pem_urlencoded,
    "base64-der": _encode_base64_der,
    "rfc9440": _encode_rfc9440,
    "xfcc": _encode_xfcc,
}

_DECODERS: dict[str, Callable[[str], x509.Certificate]] = {
    "pem": _decode_pem,
    "pem-urlencoded": _decode_pem_urlencoded,
    "base64-der": _decode_base64_der,
    "rfc9440": _decode_rfc9440,
    "xfcc": _decode_xfcc,
}
