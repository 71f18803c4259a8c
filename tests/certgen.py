"""Test certificates made on the fly: a CA, leaves signed by it, and files in every format.

Tests build exactly the certificates they need (a key that does not match, a chain written in
the wrong order, a PFX with some password) instead of depending on files checked into the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str = "Test Root CA", issuer: Issued | None = None) -> Issued:
    """A CA certificate: self-signed when ``issuer`` is None, else an intermediate."""
    key = new_key()
    builder = _builder(common_name, key, issuer).add_extension(
        x509.BasicConstraints(ca=True, path_length=None), critical=True
    )
    return Issued(_sign(builder, key, issuer), key)


def make_leaf(
    common_name: str,
    issuer: Issued,
    *,
    days: int = 30,
    not_before: datetime | None = None,
) -> Issued:
    """A leaf certificate for ``common_name`` (also its DNS SAN), signed by ``issuer``."""
    key = new_key()
    builder = (
        _builder(common_name, key, issuer, days=days, not_before=not_before)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    )
    return Issued(_sign(builder, key, issuer), key)


def _builder(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
    *,
    days: int = 365,
    not_before: datetime | None = None,
) -> x509.CertificateBuilder:
    start = not_before or datetime.now(UTC) - timedelta(days=1)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )


def _sign(
    builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, issuer: Issued | None
) -> x509.Certificate:
    signer = issuer.key if issuer else key
    return builder.sign(signer, hashes.SHA256())


def forge(genuine: x509.Certificate) -> Issued:
    """A copy of ``genuine`` — names, dates, serial and extensions — with a fresh key and signed
    by that key instead of the issuer's: every check by name passes, only the signature fails."""
    key = new_key()
    builder = x509.CertificateBuilder(
        issuer_name=genuine.issuer, subject_name=genuine.subject, public_key=key.public_key(),
        serial_number=genuine.serial_number, not_valid_before=genuine.not_valid_before_utc,
        not_valid_after=genuine.not_valid_after_utc, extensions=list(genuine.extensions))
    return Issued(builder.sign(key, hashes.SHA256()), key)


def forged_dev_client(pki: Path, directory: Path) -> tuple[Issued, Path, Path]:
    """A forged copy of the dev PKI's client certificate (:func:`forge`), written into
    ``directory`` as a chain file with the genuine intermediate, and its key file."""
    forged = forge(x509.load_pem_x509_certificate((pki / "client.pem").read_bytes()))
    chain = write(directory / "forged.pem", cert_pem(forged.cert),
                  (pki / "intermediate.pem").read_bytes())
    return forged, chain, write(directory / "forged.key", key_pem(forged.key))


# -- encodings ----------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def key_pem(
    key: ec.EllipticCurvePrivateKey, password: str | None = None, *, traditional: bool = False
) -> bytes:
    """PKCS#8 PEM (or the OpenSSL "EC PRIVATE KEY" form), encrypted when a password is given."""
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    private_format = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, private_format, encryption)


def key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pfx(
    leaf: Issued, chain: tuple[x509.Certificate, ...] = (), password: str | None = None
) -> bytes:
    """A PKCS#12 file with the leaf, its key and ``chain``, protected by ``password`` if given."""
    encryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        b"test", leaf.key, leaf.cert, list(chain), encryption
    )


def write(path: Path, *parts: bytes) -> Path:
    """Write ``parts`` one after the other into ``path`` (creating folders) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def crl_pem(issuer: Issued, revoked_serials: tuple[int, ...] = (), *, days: int = 7) -> bytes:
    """A PEM CRL signed by ``issuer`` listing ``revoked_serials``."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + timedelta(days=days))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - timedelta(hours=1)).build())
    crl = builder.sign(issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)
