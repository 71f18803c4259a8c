"""The development PKI: files, chains, dates, CRL, PKCS#12 and idempotence."""

from __future__ import annotations

import ipaddress
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL

from tlsgate.pki import CLIENT_COMMON_NAMES, CLIENT_PFX_PASSWORD, FILES, init_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("pki"))


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def leaf(path: Path) -> x509.Certificate:
    return certs(path)[0]


def private_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def client_verifier(pki: dict[str, Path], at: datetime | None = None):
    builder = PolicyBuilder().store(Store(certs(pki["root.pem"])))
    if at is not None:
        builder = builder.time(at)
    return builder.build_client_verifier()


def verify_client(pki: dict[str, Path], name: str, at: datetime | None = None):
    chain = certs(pki[name])
    return client_verifier(pki, at).verify(chain[0], chain[1:])


def now() -> datetime:
    return datetime.now(UTC)


# -- files ---------------------------------------------------------------------------------


def test_writes_every_listed_file(pki: dict[str, Path]) -> None:
    assert set(pki) == set(FILES)
    for name, path in pki.items():
        assert path.name == name
        assert path.stat().st_size > 0, name


def test_private_files_have_mode_0600(pki: dict[str, Path]) -> None:
    secret = [p for name, p in pki.items() if name.endswith((".key", ".pfx"))]
    assert len(secret) == 12
    for path in secret:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_readme_lists_every_file(pki: dict[str, Path]) -> None:
    readme = pki["README.txt"].read_text()
    for name in FILES:
        assert name in readme


def test_keys_match_their_certificates(pki: dict[str, Path]) -> None:
    for name in pki:
        if name.endswith(".key"):
            cert = leaf(pki[name.replace(".key", ".pem")])
            assert _public_der(private_key(pki[name])) == _public_der(cert), name


def _public_der(key_or_cert) -> bytes:
    public = key_or_cert.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("stem", ["server", "client"])
def test_openssl_accepts_the_key_pairs(pki: dict[str, Path], stem: str) -> None:
    """The TLS layer loads these files through pyOpenSSL; the pairs must match there too."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate_chain_file(str(pki[f"{stem}.pem"]))
    context.use_privatekey_file(str(pki[f"{stem}.key"]))
    context.check_privatekey()


def test_default_keys_are_ecdsa_p256(pki: dict[str, Path]) -> None:
    key = private_key(pki["client.key"])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


# -- CA certificates -----------------------------------------------------------------------


def test_ca_bundle_is_intermediate_then_root(pki: dict[str, Path]) -> None:
    bundle = certs(pki["ca-bundle.pem"])
    assert bundle == [leaf(pki["intermediate.pem"]), leaf(pki["root.pem"])]


@pytest.mark.parametrize(
    ("name", "issuer", "path_length"),
    [("root.pem", "root.pem", None), ("intermediate.pem", "root.pem", 0),
     ("foreign-root.pem", "foreign-root.pem", None)],
)
def test_ca_extensions(pki: dict[str, Path], name: str, issuer: str, path_length) -> None:
    cert = leaf(pki[name])
    cert.verify_directly_issued_by(leaf(pki[issuer]))
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert constraints.value.path_length == path_length
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > timedelta(days=3650)


def test_root_subject(pki: dict[str, Path]) -> None:
    root = leaf(pki["root.pem"])
    assert root.subject.rfc4514_string() == "CN=tlsgate dev root CA,OU=dev,O=tlsgate,C=US"


# -- server certificate --------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [x509.DNSName("localhost"), x509.DNSName("api.localhost"),
     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
     x509.IPAddress(ipaddress.ip_address("::1"))],
)
def test_server_certificate_verifies_for_local_names(pki: dict[str, Path], subject) -> None:
    chain = certs(pki["server.pem"])
    verifier = PolicyBuilder().store(Store(certs(pki["root.pem"]))).build_server_verifier(subject)
    verified = verifier.verify(chain[0], chain[1:])
    assert len(verified) == 3


def test_server_certificate_is_for_server_auth(pki: dict[str, Path]) -> None:
    cert = leaf(pki["server.pem"])
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=366)


# -- client certificates -------------------------------------------------------------------


def test_valid_client_chains_to_the_root(pki: dict[str, Path]) -> None:
    verified = verify_client(pki, "client.pem")
    assert [c.subject.rfc4514_string() for c in verified.chain] == [
        "CN=client-valid,OU=dev,O=tlsgate,C=US",
        "CN=tlsgate dev intermediate CA,OU=dev,O=tlsgate,C=US",
        "CN=tlsgate dev root CA,OU=dev,O=tlsgate,C=US",
    ]
    assert x509.RFC822Name("client-valid@tlsgate.test") in verified.subjects


def test_revoked_client_chains_too(pki: dict[str, Path]) -> None:
    """Only the CRL says it is revoked; path validation alone accepts it."""
    verify_client(pki, "client-revoked.pem")


@pytest.mark.parametrize("name", ["client-selfsigned.pem", "client-foreign.pem"])
def test_untrusted_clients_do_not_chain(pki: dict[str, Path], name: str) -> None:
    with pytest.raises(VerificationError):
        verify_client(pki, name)


def test_foreign_client_file_carries_its_own_root(pki: dict[str, Path]) -> None:
    assert certs(pki["client-foreign.pem"]) == [
        leaf(pki["client-foreign.pem"]), leaf(pki["foreign-root.pem"])
    ]


def test_expired_client_fails_only_because_of_its_dates(pki: dict[str, Path]) -> None:
    cert = leaf(pki["client-expired.pem"])
    assert cert.not_valid_after_utc < now() - timedelta(days=29)
    assert cert.not_valid_before_utc < now() - timedelta(days=59)
    with pytest.raises(VerificationError):
        verify_client(pki, "client-expired.pem")
    verify_client(pki, "client-expired.pem", at=now() - timedelta(days=45))


def test_not_yet_valid_client_fails_only_because_of_its_dates(pki: dict[str, Path]) -> None:
    cert = leaf(pki["client-notyet.pem"])
    assert cert.not_valid_before_utc > now() + timedelta(days=29)
    with pytest.raises(VerificationError):
        verify_client(pki, "client-notyet.pem")
    verify_client(pki, "client-notyet.pem", at=now() + timedelta(days=45))


@pytest.mark.parametrize("name", list(CLIENT_COMMON_NAMES))
def test_client_certificate_profile(pki: dict[str, Path], name: str) -> None:
    common_name = CLIENT_COMMON_NAMES[name]
    cert = leaf(pki[name])
    assert cert.subject.rfc4514_string() == f"CN={common_name},OU=dev,O=tlsgate,C=US"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{common_name}.tlsgate.test"]
    assert san.get_values_for_type(x509.RFC822Name) == [f"{common_name}@tlsgate.test"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_serials_are_distinct_and_positive(pki: dict[str, Path]) -> None:
    serials = {leaf(pki[name]).serial_number for name in CLIENT_COMMON_NAMES}
    assert len(serials) == len(CLIENT_COMMON_NAMES)
    assert all(serial > 0 for serial in serials)


def test_leaves_are_backdated_for_clock_skew(pki: dict[str, Path]) -> None:
    cert = leaf(pki["client.pem"])
    assert now() - cert.not_valid_before_utc >= timedelta(minutes=59)


# -- CRL -----------------------------------------------------------------------------------


def test_crl_lists_exactly_the_revoked_client(pki: dict[str, Path]) -> None:
    crl = x509.load_pem_x509_crl(pki["intermediate.crl"].read_bytes())
    intermediate = leaf(pki["intermediate.pem"])
    assert crl.issuer == intermediate.subject
    assert crl.is_signature_valid(intermediate.public_key())
    assert not crl.is_signature_valid(leaf(pki["root.pem"]).public_key())
    assert [entry.serial_number for entry in crl] == [leaf(pki["client-revoked.pem"]).serial_number]
    valid_serial = leaf(pki["client.pem"]).serial_number
    assert crl.get_revoked_certificate_by_serial_number(valid_serial) is None
    next_update = crl.next_update_utc
    assert next_update is not None
    assert timedelta(days=29) < next_update - now() <= timedelta(days=30)


def test_crl_der_is_the_same_crl(pki: dict[str, Path]) -> None:
    pem = x509.load_pem_x509_crl(pki["intermediate.crl"].read_bytes())
    der = x509.load_der_x509_crl(pki["intermediate.crl.der"].read_bytes())
    assert pem == der


# -- PKCS#12 -------------------------------------------------------------------------------


def test_pfx_loads_with_the_password(pki: dict[str, Path]) -> None:
    bundle = pkcs12.load_pkcs12(pki["client.pfx"].read_bytes(), CLIENT_PFX_PASSWORD.encode())
    assert bundle.cert is not None and bundle.key is not None
    assert bundle.cert.certificate == leaf(pki["client.pem"])
    assert _public_der(bundle.key) == _public_der(bundle.cert.certificate)
    assert [c.certificate for c in bundle.additional_certs] == [leaf(pki["intermediate.pem"])]


def test_pfx_refuses_a_wrong_password(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(pki["client.pfx"].read_bytes(), b"wrong")


def test_nopass_pfx_loads_without_password(pki: dict[str, Path]) -> None:
    bundle = pkcs12.load_pkcs12(pki["client-nopass.pfx"].read_bytes(), None)
    assert bundle.cert is not None and bundle.cert.certificate == leaf(pki["client.pem"])
    assert bundle.key is not None


# -- thumbprints.json ----------------------------------------------------------------------


def test_thumbprints_json(pki: dict[str, Path]) -> None:
    table = json.loads(pki["thumbprints.json"].read_text())
    assert list(table) == list(CLIENT_COMMON_NAMES)
    for name, entry in table.items():
        cert = leaf(pki[name])
        assert entry["thumbprint"] == cert.fingerprint(hashes.SHA1()).hex().upper()
        assert entry["subject"] == f"CN={CLIENT_COMMON_NAMES[name]}, OU=dev, O=tlsgate, C=US"
        assert int(entry["serial_number"], 16) == cert.serial_number
        assert entry["serial_number"] == entry["serial_number"].upper()
    intermediate = "CN=tlsgate dev intermediate CA, OU=dev, O=tlsgate, C=US"
    assert table["client.pem"]["issuer"] == intermediate


# -- idempotence, force, options -----------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def test_second_call_changes_nothing(tmp_path: Path) -> None:
    first = init_pki(tmp_path)
    before = _snapshot(tmp_path)
    assert init_pki(tmp_path, key_type="rsa") == first
    assert _snapshot(tmp_path) == before


def test_force_regenerates_and_keeps_keys_private(tmp_path: Path) -> None:
    init_pki(tmp_path)
    before = _snapshot(tmp_path)
    (tmp_path / "client.key").chmod(0o644)
    init_pki(tmp_path, force=True)
    after = _snapshot(tmp_path)
    assert set(after) == set(before)
    assert after["root.pem"] != before["root.pem"]
    assert after["client.key"] != before["client.key"]
    assert stat.S_IMODE((tmp_path / "client.key").stat().st_mode) == 0o600


def test_missing_root_means_regenerate(tmp_path: Path) -> None:
    """root.pem is written last, so its absence marks an unfinished PKI."""
    init_pki(tmp_path)
    before = _snapshot(tmp_path)
    (tmp_path / "root.pem").unlink()
    init_pki(tmp_path)
    assert (tmp_path / "root.pem").exists()
    assert _snapshot(tmp_path)["client.pem"] != before["client.pem"]


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    paths = init_pki(tmp_path / "a" / "b")
    assert paths["root.pem"] == tmp_path / "a" / "b" / "root.pem"


def test_rsa_pki(tmp_path: Path) -> None:
    paths = init_pki(tmp_path, key_type="rsa")
    for name in ("root.key", "server.key", "client.key"):
        key = private_key(paths[name])
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    verify_client(paths, "client.pem")
    usage = leaf(paths["server.pem"]).extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment


def test_unknown_key_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key_type"):
        init_pki(tmp_path, key_type="dsa")
    assert not any(tmp_path.iterdir())


def test_paths_come_in_readme_order(pki: dict[str, Path]) -> None:
    assert list(pki) == list(FILES)
