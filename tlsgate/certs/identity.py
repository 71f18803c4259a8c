"""How a certificate is named to policies and logs: thumbprints and .NET-style names."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

# Short names as .NET's X500DistinguishedName prints them.
_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "S",
    NameOID.COUNTRY_NAME: "C",
    NameOID.EMAIL_ADDRESS: "E",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
    NameOID.TITLE: "T",
    NameOID.GIVEN_NAME: "G",
    NameOID.SURNAME: "SN",
    NameOID.INITIALS: "I",
}
_NEEDS_QUOTES = frozenset(',+="\n<>#;')


@dataclass(frozen=True)
class CertificateNames:
    """What logs and the echo backend print about a certificate."""

    subject: str
    issuer: str
    thumbprint: str
    serial: str


def certificate_names(certificate: x509.Certificate) -> CertificateNames:
    """The names of a certificate, computed once per certificate.

    Two caches: by object identity first (a keep-alive connection passes the same object on
    every request, and a dict lookup by ``id`` costs nothing), then by content (hashing a
    certificate costs ~3 µs; a returning client brings a new object with the same content).
    The identity memo holds the object itself, so an ``id`` cannot be reused while its entry
    exists."""
    entry = _names_by_identity.get(id(certificate))
    if entry is not None and entry[0] is certificate:
        return entry[1]
    names = _names_by_content(certificate)
    if len(_names_by_identity) >= _IDENTITY_MEMO_SIZE:
        del _names_by_identity[next(iter(_names_by_identity))]     # oldest first
    _names_by_identity[id(certificate)] = (certificate, names)
    return names


_IDENTITY_MEMO_SIZE = 1024
_names_by_identity: dict[int, tuple[x509.Certificate, CertificateNames]] = {}


@functools.lru_cache(maxsize=1024)
def _names_by_content(certificate: x509.Certificate) -> CertificateNames:
    return CertificateNames(dotnet_name(certificate.subject), dotnet_name(certificate.issuer),
                            thumbprint(certificate), serial_number_hex(certificate))


def thumbprint(certificate: x509.Certificate) -> str:
    """Uppercase SHA-1 hex of the DER encoding, as .NET's ``X509Certificate2.Thumbprint``."""
    return certificate.fingerprint(hashes.SHA1()).hex().upper()


def serial_number_hex(certificate: x509.Certificate) -> str:
    """The serial as .NET's ``SerialNumber``: uppercase hex of its DER content bytes.

    DER keeps a leading zero byte when the high bit is set, and .NET shows it (``008F01``).
    """
    serial = certificate.serial_number
    length = serial.bit_length() // 8 + 1
    return serial.to_bytes(length, "big", signed=True).hex().upper()


def dotnet_name(name: x509.Name) -> str:
    """A distinguished name the way .NET prints it: most specific RDN first,
    ``CN=client, OU=dev, O=tlsgate, C=US``, values with special characters in double quotes."""
    return ", ".join(" + ".join(map(_attribute, rdn)) for rdn in reversed(name.rdns))


def _attribute(attribute: x509.NameAttribute) -> str:
    oid = attribute.oid
    key = _SHORT_NAMES.get(oid) or "OID." + oid.dotted_string
    value = attribute.value
    if not isinstance(value, str):
        value = value.hex()
    if not _NEEDS_QUOTES.isdisjoint(value) or value != value.strip():
        value = '"' + value.replace('"', '""') + '"'
    return f"{key}={value}"
