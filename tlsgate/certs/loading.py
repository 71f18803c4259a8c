"""Reading certificates and private keys from files, whatever their format.

Operators get certificate files from many places (a CA portal, ``openssl``, a Windows export),
and the extension rarely tells the truth: a ``.cer`` may be PEM, a ``.pem`` may be DER. So the
format is detected from the content:

* PEM: text with ``-----BEGIN ...-----`` blocks: certificates and at most one private key, in
  any order, the key possibly encrypted;
* PKCS#12 / PFX: a DER ``SEQUENCE`` whose first element is the ``INTEGER`` 3 (the PFX version);
* DER / CER: a DER ``SEQUENCE`` whose first element is another ``SEQUENCE`` (tbsCertificate).

Errors are :class:`CertificateLoadError` with a message for humans. Messages never contain the
password, and never contain key material.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from tlsgate.config.model import LoadedCertificate

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PEM_IGNORED_LABELS = frozenset({b"EC PARAMETERS"})  # written by `openssl ecparam -genkey`
_DER_SEQUENCE = 0x30
_DER_INTEGER = 0x02


class CertificateLoadError(Exception):
    """A certificate file that cannot be used; the message says why, for a human."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


def load_certificate_file(
    path: Path, password: str | None = None, *, key_file: Path | None = None
) -> LoadedCertificate:
    """Load a certificate, its chain and maybe its private key from a PEM, DER or PFX file.

    ``password`` decrypts a PFX or an encrypted private key; it is not needed (and ignored)
    for files that are not encrypted. ``key_file`` names a separate private key file (PEM or
    DER), the way ``openssl`` and ``tlsgate pki init`` write server certificates.
    """
    data = _read(path)
    kind = detect_format(data)
    if kind == "pem":
        certificates, key = _parse_pem(data, password)
    elif kind == "pkcs12":
        certificates, key = _parse_pkcs12(data, password)
    else:
        certificates, key = [_parse_der_certificate(data)], None
    loaded = _assemble(certificates, key)
    if key_file is not None:
        loaded = attach_private_key(loaded, load_private_key_file(key_file, password))
    return loaded


def attach_private_key(loaded: LoadedCertificate, key: PrivateKeyTypes) -> LoadedCertificate:
    """Add a private key read from its own file; the leaf becomes the certificate it matches."""
    if loaded.private_key is not None:
        raise CertificateLoadError("the certificate file already holds a private key")
    return _assemble([loaded.certificate, *loaded.chain], key)


def load_private_key_file(path: Path, password: str | None = None) -> PrivateKeyTypes:
    """Load a lone private key, PEM or DER, possibly encrypted with ``password``."""
    data = _read(path)
    if b"-----BEGIN " not in data:
        return _parse_key(serialization.load_der_private_key, data, password)
    keys = [block for label, block in _pem_blocks(data) if label.endswith(b"PRIVATE KEY")]
    if len(keys) != 1:
        raise CertificateLoadError(
            f"the key file should hold exactly one private key, found {len(keys)}"
        )
    return _parse_key(serialization.load_pem_private_key, keys[0], password)


def load_ca_file(path: Path) -> tuple[x509.Certificate, ...]:
    """Load CA certificates from a PEM bundle (one or more certificates) or a DER file."""
    data = _read(path)
    kind = detect_format(data)
    if kind == "pkcs12":
        raise CertificateLoadError("PKCS#12 is not supported for CA certificates; use PEM or DER")
    if kind == "der":
        return (_parse_der_certificate(data),)
    if any(label.endswith(b"PRIVATE KEY") for label, _ in _pem_blocks(data)):
        raise CertificateLoadError(
            "the file contains a private key; a CA file should hold certificates only"
        )
    certificates, _ = _parse_pem(data, None)
    if not certificates:
        raise CertificateLoadError("no certificate found in the PEM file")
    return tuple(certificates)


def detect_format(data: bytes) -> str:
    """``"pem"``, ``"pkcs12"`` or ``"der"``, judged by the bytes, not by the file name."""
    if b"-----BEGIN " in data:
        return "pem"
    first = _first_der_element_tag(data)
    if first is None:
        raise CertificateLoadError("not a certificate file (neither PEM, DER nor PKCS#12)")
    if first == (_DER_INTEGER, 3):
        return "pkcs12"
    if first[0] == _DER_SEQUENCE:
        return "der"
    if first[0] == _DER_INTEGER:
        raise CertificateLoadError("the file holds a DER private key, not a certificate")
    raise CertificateLoadError("not a certificate file (neither PEM, DER nor PKCS#12)")


def _read(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateLoadError("file not found") from None
    except IsADirectoryError:
        raise CertificateLoadError("is a directory, not a file") from None
    except OSError as error:
        raise CertificateLoadError(f"cannot read the file: {error.strerror}") from None
    if not data.strip():
        raise CertificateLoadError("the file is empty")
    return data


# -- DER ----------------------------------------------------------------------------------------


def _first_der_element_tag(data: bytes) -> tuple[int, int | None] | None:
    """The tag of the first element inside an outer DER SEQUENCE, with its value if a small INTEGER.

    Returns None when ``data`` does not start with a SEQUENCE at all.
    """
    if len(data) < 2 or data[0] != _DER_SEQUENCE:
        return None
    offset = _skip_der_length(data, 1)
    if offset is None or offset + 2 >= len(data):
        return None
    tag = data[offset]
    if tag == _DER_INTEGER and data[offset + 1] == 1:
        return tag, data[offset + 2]
    return tag, None


def _skip_der_length(data: bytes, offset: int) -> int | None:
    """The offset just after the DER length field that starts at ``offset``."""
    first = data[offset]
    if first < 0x80:
        return offset + 1
    size = first & 0x7F
    if size == 0 or size > 4 or offset + 1 + size > len(data):
        return None
    return offset + 1 + size


def _parse_der_certificate(data: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateLoadError("not a valid DER certificate") from None


# -- PEM ----------------------------------------------------------------------------------------


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(label, block)`` pairs of a PEM file; text around the blocks is ignored."""
    blocks = [(found.group(1), found.group(0)) for found in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise CertificateLoadError("no complete PEM block (-----BEGIN/-----END) found")
    return blocks


def _parse_pem(
    data: bytes, password: str | None
) -> tuple[list[x509.Certificate], PrivateKeyTypes | None]:
    """Certificates and the private key of a PEM file, in whatever order they are written."""
    certificates: list[x509.Certificate] = []
    key: PrivateKeyTypes | None = None
    for number, (label, block) in enumerate(_pem_blocks(data), start=1):
        if label == b"CERTIFICATE":
            certificates.append(_parse_pem_certificate(block, number))
        elif label.endswith(b"PRIVATE KEY"):
            if key is not None:
                raise CertificateLoadError("the file contains more than one private key")
            key = _parse_key(serialization.load_pem_private_key, block, password)
        elif label not in _PEM_IGNORED_LABELS:
            raise CertificateLoadError(f"unexpected PEM block '{label.decode()}' (#{number})")
    return certificates, key


def _parse_pem_certificate(block: bytes, number: int) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(block)
    except ValueError:
        raise CertificateLoadError(f"PEM block #{number} is not a valid certificate") from None


def _parse_key(load, data: bytes, password: str | None) -> PrivateKeyTypes:
    """Load a private key with cryptography's ``load`` (PEM or DER).

    A password given for a key that is not encrypted is simply not needed.
    """
    secret = password.encode() if password is not None else None
    try:
        return load(data, secret)
    except TypeError:
        # cryptography's way of saying "encrypted but no password" or "password but not encrypted".
        if secret is None:
            raise CertificateLoadError(
                "the private key is encrypted and no password was given"
            ) from None
        return _parse_key(load, data, None)
    except (ValueError, UnsupportedAlgorithm):
        if secret is not None:
            raise CertificateLoadError("wrong password or corrupt private key") from None
        raise CertificateLoadError("corrupt or unsupported private key") from None


# -- PKCS#12 ------------------------------------------------------------------------------------


def _parse_pkcs12(
    data: bytes, password: str | None
) -> tuple[list[x509.Certificate], PrivateKeyTypes | None]:
    """Certificates and key of a PFX file.

    Without a password, both "no password" and the empty password are tried: exporters disagree
    about which one an unprotected PFX uses.
    """
    attempts = [password.encode()] if password is not None else [None, b""]
    for secret in attempts:
        try:
            key, certificate, additional = pkcs12.load_key_and_certificates(data, secret)
        except ValueError:
            continue
        certificates = ([certificate] if certificate is not None else []) + list(additional)
        return certificates, key
    hint = "" if password is not None else " (no password was given)"
    raise CertificateLoadError(f"wrong password or corrupt PKCS#12{hint}")


# -- putting it together ------------------------------------------------------------------------


def _assemble(
    certificates: list[x509.Certificate], key: PrivateKeyTypes | None
) -> LoadedCertificate:
    """Pick the leaf (the certificate of the key, else the first one) and order its chain."""
    if not certificates and key is not None:
        raise CertificateLoadError("the file holds a private key but no certificate")
    if not certificates:
        raise CertificateLoadError("no certificate found in the file")
    leaf = certificates[0] if key is None else _certificate_of_key(certificates, key)
    # dict.fromkeys: a certificate written twice (a bundle appended to a chain) counts once.
    others = [certificate for certificate in dict.fromkeys(certificates) if certificate != leaf]
    return LoadedCertificate(certificate=leaf, chain=_chain_order(leaf, others), private_key=key)


def _certificate_of_key(
    certificates: list[x509.Certificate], key: PrivateKeyTypes
) -> x509.Certificate:
    wanted = _public_key_bytes(key.public_key())
    for certificate in certificates:
        if _public_key_bytes(certificate.public_key()) == wanted:
            return certificate
    if len(certificates) == 1:
        raise CertificateLoadError("the private key does not match the certificate")
    raise CertificateLoadError("the private key does not match any certificate in the file")


def _public_key_bytes(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _chain_order(
    leaf: x509.Certificate, others: list[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """Order the chain issuer after issuer from the leaf, so TLS peers get it in order.

    Certificates that do not continue the chain keep their file order, at the end.
    """
    remaining = list(others)
    chain: list[x509.Certificate] = []
    current = leaf
    while current.issuer != current.subject:  # a self-signed certificate ends the chain
        issuer = next((c for c in remaining if c.subject == current.issuer), None)
        if issuer is None:
            break
        chain.append(issuer)
        remaining.remove(issuer)
        current = issuer
    return tuple(chain + remaining)
