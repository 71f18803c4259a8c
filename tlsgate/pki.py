"""The development PKI behind ``tlsgate pki init DIR``.

A gateway for client-certificate authentication can only be tried with a CA, a server
certificate and client certificates in every state that a policy has to judge: valid, expired,
not yet valid, revoked, self-signed and issued by an untrusted CA. This module writes all of
them in one call, with the ``cryptography`` library only, so ``make run`` and the tests never
depend on an ``openssl`` binary or on its configuration files.

The certificates carry the extensions that RFC 5280 path validation (and therefore
``cryptography.x509.verification``) insists on: critical BasicConstraints and KeyUsage on CAs,
Subject and Authority Key Identifiers, and an extended key usage on every leaf.

Nothing here is fit for production: private keys are written unencrypted.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.certs.identity import dotnet_name, serial_number_hex, thumbprint

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Password of ``client.pfx`` (README.txt states it too).
CLIENT_PFX_PASSWORD = "tlsgate"

#: Every file ``init_pki`` writes, with the line README.txt shows for it.
SERVER_EXTRA_LABELS = ("open", "required", "api", "other")
FILES: dict[str, str] = {
    "root.pem": "root CA certificate (trust anchor: [[ca_certificate]] store = \"root\")",
    "root.key": "root CA private key",
    "intermediate.pem": "intermediate CA certificate, signed by the root, pathlen 0",
    "intermediate.key": "intermediate CA private key (issues the server and client certificates)",
    "ca-bundle.pem": "intermediate + root, e.g. for curl --cacert",
    "server.pem": "server certificate for localhost, {open,required,api,other}.localhost, "
                  "*.gw.localhost, 127.0.0.1, ::1 + intermediate",
    "server.key": "server private key",
    "client.pem": "valid client certificate (CN=client-valid) + intermediate",
    "client.key": "private key of client.pem",
    "client.pfx": f"client.pem + key as PKCS#12, password \"{CLIENT_PFX_PASSWORD}\"",
    "client-nopass.pfx": "client.pem + key as PKCS#12 without a password",
    "client-expired.pem": "client certificate whose notAfter is 30 days in the past",
    "client-expired.key": "private key of client-expired.pem",
    "client-notyet.pem": "client certificate whose notBefore is 30 days in the future",
    "client-notyet.key": "private key of client-notyet.pem",
    "client-revoked.pem": "client certificate within its dates but listed in intermediate.crl",
    "client-revoked.key": "private key of client-revoked.pem",
    "intermediate.crl": "CRL (PEM) of the intermediate CA listing client-revoked.pem, +30 days",
    "intermediate.crl.der": "the same CRL in DER",
    "client-selfsigned.pem": "self-signed client certificate (not trusted)",
    "client-selfsigned.key": "private key of client-selfsigned.pem",
    "foreign-root.pem": "another root CA, which the gateway does not trust",
    "foreign-root.key": "private key of foreign-root.pem",
    "client-foreign.pem": "client certificate issued by foreign-root.pem (+ that root)",
    "client-foreign.key": "private key of client-foreign.pem",
    "thumbprints.json": "client file -> SHA-1 thumbprint, subject, issuer, serial (.NET style)",
    "README.txt": "this file",
}

#: Client certificate files and their common names, in the order thumbprints.json lists them.
CLIENT_COMMON_NAMES: dict[str, str] = {
    "client.pem": "client-valid",
    "client-expired.pem": "client-expired",
    "client-notyet.pem": "client-notyet",
    "client-revoked.pem": "client-revoked",
    "client-selfsigned.pem": "client-selfsigned",
    "client-foreign.pem": "client-foreign",
}

KEY_TYPES = ("ec", "rsa")

_ROOT_CN = "tlsgate dev root CA"
_INTERMEDIATE_CN = "tlsgate dev intermediate CA"
_FOREIGN_ROOT_CN = "tlsgate foreign root CA (untrusted)"
_CLIENT_DOMAIN = "tlsgate.test"  # RFC 2606 reserved TLD: these names never resolve

# Leaves are backdated a little for clock skew between the machines of a dev setup. CAs are
# backdated further so that even the expired client's validity lies inside its issuer's:
# verifying it "as of" a past date then fails for no other reason than the date.
_LEAF_BACKDATE = timedelta(hours=1)
_CA_BACKDATE = timedelta(days=90)
_CA_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(days=365)
_CRL_LIFETIME = timedelta(days=30)

_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


@dataclass(frozen=True)
class _Issuer:
    """A certificate together with the key that signs what it issues."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class _Client:
    """A client certificate, its key, and the chain certificates written after it."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class _Output:
    """The bytes of one file and whether it holds a secret (and so gets mode 0600)."""

    data: bytes
    private: bool = False


def init_pki(directory: Path, *, key_type: str = "ec", force: bool = False) -> dict[str, Path]:
    """Write the development PKI into ``directory`` and return ``{file name: path}``.

    Idempotent so that ``make run`` can call it every time: when ``root.pem`` exists already and
    ``force`` is false nothing is written and the existing files are returned. ``key_type`` is
    ``"ec"`` (ECDSA P-256) or ``"rsa"`` (RSA-2048) and applies to every key.
    """
    if key_type not in KEY_TYPES:
        raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")
    directory = Path(directory)
    if (directory / "root.pem").exists() and not force:
        return _existing_paths(directory)
    _write_outputs(directory, _build_outputs(key_type, _utc_now()))
    return _existing_paths(directory)


def _existing_paths(directory: Path) -> dict[str, Path]:
    """The PKI files present in ``directory``, in README order.

    A partial set if someone deleted files: callers then fail on the missing name rather than
    on a path that does not exist.
    """
    return {name: directory / name for name in FILES if (directory / name).exists()}


def _utc_now() -> datetime:
    """Now, to the second: certificates cannot carry fractions anyway."""
    return datetime.now(UTC).replace(microsecond=0)


# -- building ------------------------------------------------------------------------------


def _build_outputs(key_type: str, now: datetime) -> dict[str, _Output]:
    """Create every key, certificate and CRL in memory, keyed by file name."""
    root = _root_ca(_new_key(key_type), _ROOT_CN, now)
    intermediate = _intermediate_ca(_new_key(key_type), root, now)
    foreign_root = _root_ca(_new_key(key_type), _FOREIGN_ROOT_CN, now)
    clients = _client_certs(key_type, intermediate, foreign_root, now)
    revoked = clients["client-revoked.pem"].cert.serial_number
    outputs = {
        "root.key": _key_output(root.key),
        **_ca_outputs("intermediate", intermediate),
        **_ca_outputs("foreign-root", foreign_root),
        "ca-bundle.pem": _chain_output(intermediate.cert, root.cert),
        **_server_outputs(key_type, intermediate, now),
        **_client_outputs(clients),
        **_crl_outputs(_crl(intermediate, [revoked], now)),
        "thumbprints.json": _Output(_thumbprints_json(clients)),
        "README.txt": _Output(_readme(key_type).encode()),
    }
    # root.pem is what marks the PKI as complete, so it is written last: an interrupted run
    # leaves no root.pem behind and the next ``make run`` starts over.
    outputs["root.pem"] = _chain_output(root.cert)
    return outputs


def _ca_outputs(stem: str, ca: _Issuer) -> dict[str, _Output]:
    """``STEM.pem`` (the CA certificate alone) and ``STEM.key``."""
    return {f"{stem}.pem": _chain_output(ca.cert), f"{stem}.key": _key_output(ca.key)}


def _server_outputs(key_type: str, intermediate: _Issuer, now: datetime) -> dict[str, _Output]:
    """``server.pem`` (leaf + intermediate, what a TLS server sends) and ``server.key``."""
    key = _new_key(key_type)
    cert = _server_cert(key, intermediate, now)
    return {
        "server.pem": _chain_output(cert, intermediate.cert),
        "server.key": _key_output(key),
    }


def _client_outputs(clients: dict[str, _Client]) -> dict[str, _Output]:
    """``NAME.pem`` + ``NAME.key`` for every client, and the PKCS#12 forms of the valid one."""
    outputs = {}
    for file_name, client in clients.items():
        outputs[file_name] = _chain_output(client.cert, *client.chain)
        outputs[_key_file(file_name)] = _key_output(client.key)
    valid = clients["client.pem"]
    outputs["client.pfx"] = _pfx_output(valid, CLIENT_PFX_PASSWORD)
    outputs["client-nopass.pfx"] = _pfx_output(valid, None)
    return outputs


def _crl_outputs(crl: x509.CertificateRevocationList) -> dict[str, _Output]:
    """The CRL as PEM (what ``crl_files`` usually points at) and as DER (what CDPs serve)."""
    return {
        "intermediate.crl": _Output(crl.public_bytes(_PEM)),
        "intermediate.crl.der": _Output(crl.public_bytes(_DER)),
    }


def _new_key(key_type: str) -> PrivateKey:
    """A fresh private key of the requested type."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    """``CN=..., OU=dev, O=tlsgate, C=US`` (listed here in DER order, country first)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsgate"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(**flags: bool) -> x509.KeyUsage:
    """KeyUsage with the named bits set; the constructor wants all nine spelled out."""
    bits = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    bits.update(flags)
    return x509.KeyUsage(**bits)


def _certificate(
    subject: x509.Name,
    key: PrivateKey,
    issuer: _Issuer | None,
    not_before: datetime,
    not_after: datetime,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """Sign a certificate for ``key``; ``issuer=None`` makes it self-signed.

    Every certificate gets a Subject Key Identifier, and every issued one an Authority Key
    Identifier copied from its issuer's SKI, so chain builders can match issuers by key.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        issuer_ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value)
        builder = builder.add_extension(aki, False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def _ca_extensions(path_length: int | None) -> list[tuple[x509.ExtensionType, bool]]:
    """What RFC 5280 requires of a CA: critical BasicConstraints and KeyUsage."""
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(key_cert_sign=True, crl_sign=True), True),
    ]


def _root_ca(key: PrivateKey, common_name: str, now: datetime) -> _Issuer:
    """A self-signed root CA with no path length limit."""
    cert = _certificate(
        _name(common_name), key, None, now - _CA_BACKDATE, now + _CA_LIFETIME, _ca_extensions(None)
    )
    return _Issuer(cert, key)


def _intermediate_ca(key: PrivateKey, root: _Issuer, now: datetime) -> _Issuer:
    """The issuing CA, below the root; pathlen 0 so it cannot create further CAs."""
    cert = _certificate(
        _name(_INTERMEDIATE_CN), key, root, now - _CA_BACKDATE, now + _CA_LIFETIME,
        _ca_extensions(0),
    )
    return _Issuer(cert, key)


def _leaf_extensions(
    key: PrivateKey, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
) -> list[tuple[x509.ExtensionType, bool]]:
    """End-entity extensions: not a CA, one extended key usage, and a SAN.

    RSA leaves also get keyEncipherment, which TLS 1.2 RSA key exchange checks on servers.
    """
    key_usage = _key_usage(
        digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)
    )
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (key_usage, True),
        (x509.ExtendedKeyUsage([usage]), False),
        (x509.SubjectAlternativeName(names), False),
    ]


def _server_cert(key: PrivateKey, intermediate: _Issuer, now: datetime) -> x509.Certificate:
    """The gateway's certificate for every way of writing "this machine"."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        # OpenSSL's clients refuse a wildcard directly under a single label ("*.localhost"),
        # so the names tests and demos use for extra SNI hostnames are listed one by one.
        *(x509.DNSName(f"{label}.localhost") for label in SERVER_EXTRA_LABELS),
        x509.DNSName("*.localhost"),
        x509.DNSName("*.gw.localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    extensions = _leaf_extensions(key, ExtendedKeyUsageOID.SERVER_AUTH, names)
    return _certificate(
        _name("localhost"), key, intermediate, now - _LEAF_BACKDATE, now + _LEAF_LIFETIME,
        extensions,
    )


def _client_certs(
    key_type: str, intermediate: _Issuer, foreign_root: _Issuer, now: datetime
) -> dict[str, _Client]:
    """One client certificate per state a policy must tell apart, keyed by file name."""
    valid = (now - _LEAF_BACKDATE, now + _LEAF_LIFETIME)
    expired = (now - timedelta(days=60), now - timedelta(days=30))
    not_yet = (now + timedelta(days=30), now + timedelta(days=30) + _LEAF_LIFETIME)
    plans: dict[str, tuple[_Issuer | None, tuple[datetime, datetime]]] = {
        "client.pem": (intermediate, valid),
        "client-expired.pem": (intermediate, expired),
        "client-notyet.pem": (intermediate, not_yet),
        "client-revoked.pem": (intermediate, valid),
        "client-selfsigned.pem": (None, valid),
        "client-foreign.pem": (foreign_root, valid),
    }
    return {
        file_name: _client_cert(_new_key(key_type), CLIENT_COMMON_NAMES[file_name], issuer, dates)
        for file_name, (issuer, dates) in plans.items()
    }


def _client_cert(
    key: PrivateKey,
    common_name: str,
    issuer: _Issuer | None,
    dates: tuple[datetime, datetime],
) -> _Client:
    """A clientAuth certificate with a DNS name and an e-mail address in its SAN.

    The chain written after it is its issuer (none when self-signed). For the intermediate's
    clients that is the usual "everything but the root"; for the foreign client it is the
    foreign root itself, which is what an attacker would present, and which must not help.
    """
    names: list[x509.GeneralName] = [
        x509.DNSName(f"{common_name}.{_CLIENT_DOMAIN}"),
        x509.RFC822Name(f"{common_name}@{_CLIENT_DOMAIN}"),
    ]
    extensions = _leaf_extensions(key, ExtendedKeyUsageOID.CLIENT_AUTH, names)
    cert = _certificate(_name(common_name), key, issuer, *dates, extensions)
    return _Client(cert, key, () if issuer is None else (issuer.cert,))


def _crl(issuer: _Issuer, serials: list[int], now: datetime) -> x509.CertificateRevocationList:
    """A CRL as RFC 5280 wants it: AKI and CRL number, revoked entries with a reason."""
    issuer_ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + _CRL_LIFETIME)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value), False
        )
        .add_extension(x509.CRLNumber(1), False)
    )
    for serial in serials:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(issuer.key, hashes.SHA256())


# -- serializing ---------------------------------------------------------------------------


def _key_file(cert_file: str) -> str:
    """``client-expired.pem`` -> ``client-expired.key``."""
    return cert_file.removesuffix(".pem") + ".key"


def _chain_output(*certs: x509.Certificate) -> _Output:
    """Certificates concatenated as PEM, leaf first."""
    return _Output(b"".join(cert.public_bytes(_PEM) for cert in certs))


def _key_output(key: PrivateKey) -> _Output:
    """An unencrypted PKCS#8 PEM key, the form every TLS tool reads."""
    data = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return _Output(data, private=True)


def _pfx_output(client: _Client, password: str | None) -> _Output:
    """PKCS#12 with key, certificate and chain, as browsers and Windows import it.

    The password-protected file uses PBES2 with AES-256 and a SHA-256 MAC, which OpenSSL 3,
    .NET and current Windows and macOS read; the older RC2 form needs OpenSSL 3's legacy
    provider, so it is avoided.
    """
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password.encode())
    data = pkcs12.serialize_key_and_certificates(
        CLIENT_COMMON_NAMES["client.pem"].encode(), client.key, client.cert, list(client.chain),
        encryption,
    )
    return _Output(data, private=True)


def _thumbprints_json(clients: dict[str, _Client]) -> bytes:
    """The identities tests and sample policies need, without parsing certificates."""
    table = {
        file_name: {
            "thumbprint": thumbprint(client.cert),
            "subject": dotnet_name(client.cert.subject),
            "issuer": dotnet_name(client.cert.issuer),
            "serial_number": serial_number_hex(client.cert),
            "not_before": client.cert.not_valid_before_utc.isoformat(),
            "not_after": client.cert.not_valid_after_utc.isoformat(),
        }
        for file_name, client in clients.items()
    }
    return (json.dumps(table, indent=2) + "\n").encode()


def _readme(key_type: str) -> str:
    """README.txt: what each file is for, and how to use the valid client certificate."""
    width = max(map(len, FILES))
    lines = [
        "tlsgate development PKI -- written by `tlsgate pki init`. NOT FOR PRODUCTION:",
        "private keys are stored unencrypted.",
        "",
        f"Key type: {'ECDSA P-256' if key_type == 'ec' else 'RSA-2048'}. Leaves are valid for"
        " one year, CAs for ten.",
        "To regenerate, delete this directory (or use --force) and run `tlsgate pki init` again.",
        "",
        *(f"  {name.ljust(width)}  {description}" for name, description in FILES.items()),
        "",
        "Try it against a gateway on https://localhost:8443:",
        "  curl --cacert ca-bundle.pem --cert client.pem --key client.key \\",
        "       https://localhost:8443/echo",
        "",
    ]
    return "\n".join(lines)


def _write_outputs(directory: Path, outputs: dict[str, _Output]) -> None:
    """Write the files in order; secrets are created with mode 0600 and never wider.

    On ``force`` the old root.pem goes first, so an interrupted run cannot leave a new
    intermediate beside the old root looking like a complete PKI.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root.pem").unlink(missing_ok=True)
    for name, output in outputs.items():
        _write_file(directory / name, output)


def _write_file(path: Path, output: _Output) -> None:
    """Replace ``path`` with ``output.data``; private files get exactly mode 0600."""
    mode = 0o600 if output.private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        if output.private:
            # os.open's mode applies only to new files; an existing key may be wider.
            os.fchmod(handle.fileno(), 0o600)
        handle.write(output.data)
