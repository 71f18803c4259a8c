"""Client certificates in header fields: round trips, known answers, proxies' variants, fuzz."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsgate.certs.header_formats import (
    FORMATS,
    HeaderCertificateError,
    decode_certificate,
    encode_certificate,
    parse_xfcc,
)
from tlsgate.pki import init_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: dict[str, Path]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pki["client.pem"].read_bytes())[0]


@pytest.fixture(scope="module")
def odd_cert() -> x509.Certificate:
    """A subject with a comma, double quotes and non-ASCII text, all of which need escaping."""
    return _self_signed('Smith, "Bob" Müller')


def _self_signed(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def sha256_hex(cert: x509.Certificate) -> str:
    return hashlib.sha256(der_of(cert)).hexdigest()


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(cert: x509.Certificate, fmt: str) -> None:
    value = encode_certificate(cert, fmt)
    assert isinstance(value, bytes)
    assert value.isascii() and b"\n" not in value and b"\r" not in value
    assert decode_certificate(value, fmt) == cert
    assert decode_certificate(value.decode(), fmt) == cert


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_with_awkward_subject(odd_cert: x509.Certificate, fmt: str) -> None:
    value = encode_certificate(odd_cert, fmt)
    assert value.isascii()
    assert decode_certificate(value, fmt) == odd_cert


@pytest.mark.parametrize("fmt", FORMATS)
def test_surrounding_whitespace_is_ignored(cert: x509.Certificate, fmt: str) -> None:
    value = b" \t" + encode_certificate(cert, fmt) + b" "
    assert decode_certificate(value, fmt) == cert


def test_unknown_format_is_a_value_error_not_a_header_error(cert: x509.Certificate) -> None:
    with pytest.raises(ValueError) as info:
        decode_certificate(b"x", "der")
    assert not isinstance(info.value, HeaderCertificateError)
    with pytest.raises(ValueError):
        encode_certificate(cert, "PEM")


# -- known answers -------------------------------------------------------------------------


def test_rfc9440_is_a_colon_delimited_byte_sequence(cert: x509.Certificate) -> None:
    expected = b":" + base64.b64encode(der_of(cert)) + b":"
    assert encode_certificate(cert, "rfc9440") == expected


def test_base64_der_is_plain_base64(cert: x509.Certificate) -> None:
    assert encode_certificate(cert, "base64-der") == base64.b64encode(der_of(cert))


def test_pem_urlencoded_escapes_like_nginx(cert: x509.Certificate) -> None:
    value = encode_certificate(cert, "pem-urlencoded")
    assert value == quote(pem_of(cert), safe="").encode()
    assert value.startswith(b"-----BEGIN%20CERTIFICATE-----%0A")
    assert value.endswith(b"-----END%20CERTIFICATE-----%0A")
    assert not set(b"+/= \n") & set(value)


def test_pem_is_single_line_with_spaces_like_apache(cert: x509.Certificate) -> None:
    value = encode_certificate(cert, "pem")
    assert value == pem_of(cert).strip().replace("\n", " ").encode()
    assert value.startswith(b"-----BEGIN CERTIFICATE----- MII")
    assert value.endswith(b" -----END CERTIFICATE-----")


def test_xfcc_element(cert: x509.Certificate) -> None:
    expected = (
        f"Hash={sha256_hex(cert)};"
        'Subject="CN=client-valid,OU=dev,O=tlsgate,C=US";'
        f'Cert="{quote(pem_of(cert), safe="")}"'
    )
    assert encode_certificate(cert, "xfcc") == expected.encode()


def test_xfcc_escapes_quotes_backslashes_and_non_ascii(odd_cert: x509.Certificate) -> None:
    value = encode_certificate(odd_cert, "xfcc").decode()
    # RFC 4514 gives  CN=Smith\, \"Bob\" M\C3\BCller,O=Example\, Inc.
    # and the quoted-string escapes each backslash and quote once more.
    assert r'Subject="CN=Smith\\, \\\"Bob\\\" M\\C3\\BCller,O=Example\\, Inc."' in value
    [[_, subject, _]] = parse_xfcc(value)
    assert subject == ("Subject", 'CN=Smith\\, \\"Bob\\" M\\C3\\BCller,O=Example\\, Inc.')


# -- what real proxies send: pem -----------------------------------------------------------


def _pem_variants(cert: x509.Certificate) -> dict[str, str]:
    pem = pem_of(cert)
    lines = pem.strip().split("\n")
    return {
        "newlines": pem,
        "crlf": pem.replace("\n", "\r\n"),
        "apache trailing space": pem.replace("\n", " "),
        "nginx tab folding": "\n\t".join(lines),
        "tabs": "\t".join(lines),
        "body on one line": f"{lines[0]}{''.join(lines[1:-1])}{lines[-1]}",
    }


@pytest.mark.parametrize(
    "variant",
    ["newlines", "crlf", "apache trailing space", "nginx tab folding", "tabs", "body on one line"],
)
def test_pem_accepts_every_line_break_style(cert: x509.Certificate, variant: str) -> None:
    assert decode_certificate(_pem_variants(cert)[variant], "pem") == cert


def test_pem_chain_yields_the_leaf(pki: dict[str, Path], cert: x509.Certificate) -> None:
    chain = pki["client.pem"].read_text().replace("\n", " ")
    assert decode_certificate(chain, "pem") == cert


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("(null)", "no client certificate"),
        ("-----BEGIN%20CERTIFICATE-----%0AMII", "percent-encoded"),
        ("-----BEGIN CERTIFICATE----- MIIB", "without a matching END"),
        ("hello", "no PEM block"),
        ("-----BEGIN PRIVATE KEY----- AAAA -----END PRIVATE KEY-----", "'PRIVATE KEY'"),
        ("-----BEGIN CERTIFICATE----- AAAA -----END X509 CRL-----", "ends as 'X509 CRL'"),
        ("-----BEGIN CERTIFICATE----- AA*A -----END CERTIFICATE-----", "not base64"),
        ("-----BEGIN CERTIFICATE----- AAA -----END CERTIFICATE-----", "not valid base64"),
        ("-----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE-----", "not a DER X.509"),
        ("-----BEGIN CERTIFICATE-----  -----END CERTIFICATE-----", "PEM body is empty"),
        ("junk -----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE-----", "outside the PEM"),
    ],
)
def test_pem_errors_say_what_is_wrong(value: str, message: str) -> None:
    with pytest.raises(HeaderCertificateError, match=message):
        decode_certificate(value, "pem")


def test_pem_rejects_text_after_the_block(cert: x509.Certificate) -> None:
    with pytest.raises(HeaderCertificateError, match="after the PEM block"):
        decode_certificate(pem_of(cert) + "trailer", "pem")


# -- pem-urlencoded ------------------------------------------------------------------------


def test_pem_urlencoded_accepts_aws_alb_style(cert: x509.Certificate) -> None:
    """ALB leaves + = / unescaped; + must not turn into a space."""
    value = quote(pem_of(cert), safe="+=/")
    assert "+" in value or "/" in value
    assert decode_certificate(value, "pem-urlencoded") == cert


def test_pem_urlencoded_chain_yields_the_leaf(pki: dict[str, Path], cert: x509.Certificate) -> None:
    value = quote(pki["client.pem"].read_text(), safe="")
    assert decode_certificate(value, "pem-urlencoded") == cert


def test_pem_urlencoded_rejects_non_ascii_after_decoding() -> None:
    with pytest.raises(HeaderCertificateError, match="not ASCII"):
        decode_certificate("%FF%FE", "pem-urlencoded")


# -- base64-der and rfc9440 ----------------------------------------------------------------


def test_base64_der_tolerates_missing_padding(odd_cert: x509.Certificate) -> None:
    value = base64.b64encode(der_of(odd_cert)).rstrip(b"=")
    assert decode_certificate(value, "base64-der") == odd_cert


def test_rfc9440_tolerates_missing_padding(cert: x509.Certificate) -> None:
    value = b":" + base64.b64encode(der_of(cert)).rstrip(b"=") + b":"
    assert decode_certificate(value, "rfc9440") == cert


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("MIIB", "colon at both ends"),
        (":MIIB", "colon at both ends"),
        (":", "colon at both ends"),
        ("::", "byte sequence is empty"),
        (":AAAA:;param=1", "colon at both ends"),
        (":AAAA:, :BBBB:", "exactly one byte sequence"),
        (":AA-A:", "not base64"),
        (":AAAAA:", "not valid base64"),
        (":AAAA:", "not a DER X.509"),
        ('"AAAA"', "colon at both ends"),
    ],
)
def test_rfc9440_errors(value: str, message: str) -> None:
    with pytest.raises(HeaderCertificateError, match=message):
        decode_certificate(value, "rfc9440")


def test_unknown_x509_version_is_a_header_error(cert: x509.Certificate) -> None:
    """cryptography raises InvalidVersion, which is not a ValueError, for such a field."""
    der = der_of(cert)
    v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2, i.e. X.509 v3
    assert der.count(v3) == 1
    value = base64.b64encode(der.replace(v3, bytes.fromhex("a003020107")))
    with pytest.raises(HeaderCertificateError, match="not a DER X.509 certificate"):
        decode_certificate(value, "base64-der")


def test_non_ascii_values_are_refused() -> None:
    with pytest.raises(HeaderCertificateError, match="non-ASCII bytes"):
        decode_certificate(b":\xff:", "rfc9440")
    with pytest.raises(HeaderCertificateError, match="non-ASCII characters"):
        decode_certificate(":é:", "rfc9440")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_values_are_refused(fmt: str) -> None:
    with pytest.raises(HeaderCertificateError, match="empty"):
        decode_certificate(b"  ", fmt)


# -- xfcc ----------------------------------------------------------------------------------


def _xfcc_element(cert: x509.Certificate, by: str) -> str:
    return f"By={by};" + encode_certificate(cert, "xfcc").decode() + ";URI=spiffe://a/b;DNS=x;DNS=y"


def test_xfcc_takes_the_nearest_proxys_element(
    pki: dict[str, Path], cert: x509.Certificate
) -> None:
    foreign = x509.load_pem_x509_certificates(pki["client-foreign.pem"].read_bytes())[0]
    value = _xfcc_element(foreign, "spiffe://far") + "," + _xfcc_element(cert, "spiffe://near")
    assert decode_certificate(value, "xfcc") == cert
    elements = parse_xfcc(value)
    assert len(elements) == 2
    assert elements[1][0] == ("By", "spiffe://near")
    assert ("Subject", "CN=client-valid,OU=dev,O=tlsgate,C=US") in elements[1]
    assert [v for k, v in elements[1] if k == "DNS"] == ["x", "y"]


def test_xfcc_elements_joined_from_several_header_lines(
    odd_cert: x509.Certificate, cert: x509.Certificate
) -> None:
    """Proxies that merge repeated header lines join them with ", "."""
    value = f"{_xfcc_element(odd_cert, 'a')}, {_xfcc_element(cert, 'b')}"
    assert decode_certificate(value, "xfcc") == cert
    first, second = parse_xfcc(value)
    assert dict(first)["By"] == "a" and dict(second)["By"] == "b"


def test_xfcc_quoted_subject_with_comma_does_not_split_elements(
    odd_cert: x509.Certificate, cert: x509.Certificate
) -> None:
    value = _xfcc_element(odd_cert, "a") + "," + _xfcc_element(cert, "b")
    first, second = parse_xfcc(value)
    assert dict(first)["Subject"] == odd_cert.subject.rfc4514_string().replace(
        "ü", "\\C3\\BC"
    )
    assert dict(second)["Hash"] == sha256_hex(cert)


def test_xfcc_never_falls_back_to_a_farther_element(cert: x509.Certificate) -> None:
    value = _xfcc_element(cert, "far") + ",By=near;Hash=" + sha256_hex(cert)
    with pytest.raises(HeaderCertificateError, match="no Cert field"):
        decode_certificate(value, "xfcc")


def test_xfcc_hash_must_match(cert: x509.Certificate, odd_cert: x509.Certificate) -> None:
    element = encode_certificate(cert, "xfcc").decode()
    tampered = element.replace(sha256_hex(cert), sha256_hex(odd_cert))
    with pytest.raises(HeaderCertificateError, match="Hash does not match"):
        decode_certificate(tampered, "xfcc")
    upper = element.replace(sha256_hex(cert), sha256_hex(cert).upper())
    assert decode_certificate(upper, "xfcc") == cert


def test_xfcc_unquoted_cert_and_no_hash(cert: x509.Certificate) -> None:
    value = "By=x;Cert=" + quote(pem_of(cert), safe="")
    assert decode_certificate(value, "xfcc") == cert


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (",,", "no elements"),
        ('Cert="abc', "unterminated"),
        ("Cert", "without '='"),
        ("=abc", "invalid name"),
        ('Cert=ab"c"', "stray double quote"),
        ('Cert="a"b', "after a closing quote"),
        ("Cert=a;Cert=b", "more than one Cert"),
        ("Cert=%2D%2D", "XFCC Cert field: no PEM block"),
    ],
)
def test_xfcc_errors(value: str, message: str) -> None:
    with pytest.raises(HeaderCertificateError, match=message):
        decode_certificate(value, "xfcc")


# -- properties ----------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

# Characters that steer the parsers into their interesting branches.
_SYNTAX = st.text(alphabet=':;,="\\%+/=-ABCDEIFGNRTMIab01 \t\n', max_size=80)


def _outcome(value: bytes | str, fmt: str) -> None:
    try:
        result = decode_certificate(value, fmt)
    except HeaderCertificateError as exc:
        assert str(exc)
    else:
        assert isinstance(result, x509.Certificate)


@_FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    value=st.binary(max_size=300) | st.text(max_size=300) | _SYNTAX,
)
def test_any_input_gives_a_certificate_or_a_header_error(fmt: str, value: bytes | str) -> None:
    _outcome(value, fmt)


@_FUZZ
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_mutated_encodings_give_a_certificate_or_a_header_error(
    cert: x509.Certificate, fmt: str, data: st.DataObject
) -> None:
    value = encode_certificate(cert, fmt).decode()
    start = data.draw(st.integers(0, len(value)))
    end = data.draw(st.integers(start, min(len(value), start + 8)))
    insert = data.draw(st.text(alphabet=':;,="\\%+/= AQg\n', max_size=4))
    _outcome(value[:start] + insert + value[end:], fmt)


@_FUZZ
@given(value=_SYNTAX)
def test_parse_xfcc_raises_only_header_errors(value: str) -> None:
    try:
        elements = parse_xfcc(value)
    except HeaderCertificateError:
        return
    assert all(elements) and all(key for element in elements for key, _ in element)
