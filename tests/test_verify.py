"""Verify() / VerifyNoRevocation(): chain building, dates, EKU, CRLs and the verdict cache.

Runs against the development PKI (root -> intermediate -> clients in every state, plus a
foreign root), with extra certificates and CRLs built here where a case needs one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsgate.certs.revocation import (
    GOOD,
    REVOKED,
    UNKNOWN,
    CRLLoadError,
    LoadedCRL,
    RevocationChecker,
    load_crl_file,
    load_crls,
    parse_crls,
)
from tlsgate.certs.verify import (
    EXPIRED,
    NOT_TRUSTED,
    NOT_YET_VALID,
    REVOCATION_UNKNOWN,
    REVOKED_REASON,
    CertificateVerifier,
)
from tlsgate.config.model import CACertificateEntry, RevocationSettings
from tlsgate.pki import init_pki

# -- the PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pki:
    directory: Path
    root: Issuer
    intermediate: Issuer
    foreign_root: Issuer

    def chain(self, name: str) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates((self.directory / name).read_bytes())

    def leaf(self, name: str) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        certs = self.chain(name)
        return certs[0], tuple(certs[1:])

    @property
    def crl(self) -> Path:
        return self.directory / "intermediate.crl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("verify") / "pki"
    init_pki(directory)

    def issuer(stem: str) -> Issuer:
        cert = x509.load_pem_x509_certificate((directory / f"{stem}.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), None)
        return Issuer(cert, key)  # type: ignore[arg-type]

    return Pki(directory, issuer("root"), issuer("intermediate"), issuer("foreign-root"))


def entry(id: str, store: str, *certs: x509.Certificate) -> CACertificateEntry:
    return CACertificateEntry(id=id, file=Path(f"/nonexistent/{id}.pem"), store=store,
                              certificates=tuple(certs))


def ca_entries(pki: Pki, *, intermediate: bool = True) -> list[CACertificateEntry]:
    entries = [entry("root", "root", pki.root.cert)]
    if intermediate:
        entries.append(entry("intermediate", "intermediate", pki.intermediate.cert))
    return entries


def checker(pki: Pki, mode: str = "strict", *crl_files: Path) -> RevocationChecker:
    ca = [pki.root.cert, pki.intermediate.cert]
    result = load_crls(list(crl_files), ca)
    assert not result.errors, result.errors
    return RevocationChecker(result.crls, ca, mode)


def verifier(pki: Pki, mode: str = "strict", *crl_files: Path, **options) -> CertificateVerifier:
    crl_files = crl_files or (pki.crl,)
    return CertificateVerifier(ca_entries(pki), checker(pki, mode, *crl_files), **options)


# -- building extra certificates and CRLs ---------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    issuer: Issuer | None,
    common_name: str,
    *,
    ca: bool = False,
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    san: bool = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issuer:
    """A certificate signed by ``issuer`` (self-signed when None), with the usual extensions."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now() - timedelta(hours=1))
        .not_valid_after(not_after or now() + timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()), False
        )
    usage = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
         "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"), False)
    if ca:
        usage.update(key_cert_sign=True, crl_sign=True)
    else:
        usage.update(digital_signature=True)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(f"{common_name}.test")]), False
            )
    builder = builder.add_extension(x509.KeyUsage(**usage), True)
    signer = issuer.key if issuer else key
    return Issuer(builder.sign(signer, hashes.SHA256()), key)


def make_crl(
    issuer_name: x509.Name,
    signer: Issuer,
    revoked: Sequence[int] = (),
    *,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    number: int = 1,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
) -> x509.CertificateRevocationList:
    this_update = this_update or now() - timedelta(minutes=5)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_name)
        .last_update(this_update)
        .next_update(next_update or this_update + timedelta(days=7))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.cert.public_key()), False
        )
        .add_extension(x509.CRLNumber(number), False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .add_extension(x509.CRLReason(reason), False)
            .build()
        )
    return builder.sign(signer.key, hashes.SHA256())


def write(path: Path, crl: x509.CertificateRevocationList, der: bool = False) -> Path:
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    path.write_bytes(crl.public_bytes(encoding))
    return path


# -- the dev PKI's clients -----------------------------------------------------------------


def test_valid_client_passes_strict_mode_with_only_the_intermediate_crl(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    result = verifier(pki, "strict").verify(leaf, chain)
    assert result.ok, result.message
    assert result.reason is None
    assert result.path == (leaf, pki.intermediate.cert, pki.root.cert)
    assert "not revoked" in result.message


@pytest.mark.parametrize(
    ("file_name", "reason", "words"),
    [
        ("client-expired.pem", EXPIRED, "expired on"),
        ("client-notyet.pem", NOT_YET_VALID, "is not valid before"),
        ("client-revoked.pem", REVOKED_REASON, "was revoked on"),
        ("client-selfsigned.pem", NOT_TRUSTED, "self-signed"),
        ("client-foreign.pem", NOT_TRUSTED, "trusted root"),
    ],
)
def test_dev_pki_clients_get_their_reason(
    pki: Pki, file_name: str, reason: str, words: str
) -> None:
    leaf, chain = pki.leaf(file_name)
    result = verifier(pki).verify(leaf, chain)
    assert not result.ok
    assert result.reason == reason
    assert words in result.message
    assert "<Certificate" not in result.message


def test_revoked_client_passes_without_revocation_check(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-revoked.pem")
    v = verifier(pki)
    assert v.verify(leaf, chain, check_revocation=False).ok
    assert v.verify_bool(leaf, chain, check_revocation=False) is True   # VerifyNoRevocation()
    assert v.verify_bool(leaf, chain) is False                          # Verify()
    result = v.verify(leaf, chain)
    assert "reason keyCompromise" in result.message


def test_foreign_client_without_its_root_in_the_chain_is_not_trusted(pki: Pki) -> None:
    leaf, _ = pki.leaf("client-foreign.pem")
    assert verifier(pki).verify(leaf).reason == NOT_TRUSTED


def test_intermediate_from_the_client_chain_is_enough(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = CertificateVerifier(ca_entries(pki, intermediate=False), checker(pki, "strict", pki.crl))
    assert v.verify(leaf, chain).ok
    missing = v.verify(leaf, ())
    assert missing.reason == NOT_TRUSTED
    assert missing.path == ()
    assert "tlsgate dev intermediate CA" in missing.message


def test_intermediate_from_the_store_is_enough(pki: Pki) -> None:
    leaf, _ = pki.leaf("client.pem")
    assert verifier(pki).verify(leaf, ()).ok


def test_an_intermediate_is_not_a_trust_anchor(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = CertificateVerifier([entry("i", "intermediate", pki.intermediate.cert)], None)
    assert v.verify(leaf, chain).reason == NOT_TRUSTED


def test_no_root_configured_trusts_nothing(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    result = CertificateVerifier([], None).verify(leaf, chain)
    assert result.reason == NOT_TRUSTED
    assert "no trusted root" in result.message


def test_self_signed_client_in_the_root_store_is_trusted(pki: Pki) -> None:
    """API Management: a self-signed client certificate works once uploaded as a CA."""
    leaf, _ = pki.leaf("client-selfsigned.pem")
    v = CertificateVerifier([entry("me", "root", leaf)], checker(pki, "strict"))
    result = v.verify(leaf)
    assert result.ok, result.message
    assert result.path == (leaf,)        # the anchor itself: nothing to check for revocation


# -- revocation modes ------------------------------------------------------------------------


def test_strict_mode_without_a_crl_is_unknown(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = CertificateVerifier(ca_entries(pki), RevocationChecker((), (), "strict"))
    result = v.verify(leaf, chain)
    assert result.reason == REVOCATION_UNKNOWN
    assert "no CRL of 'CN=tlsgate dev intermediate CA" in result.message
    assert result.path[0] == leaf
    assert v.verify(leaf, chain, check_revocation=False).ok


@pytest.mark.parametrize("mode", ["ignore-unavailable", "skip"])
def test_lenient_modes_without_a_crl_pass(pki: Pki, mode: str) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = CertificateVerifier(ca_entries(pki), RevocationChecker((), (), mode))
    result = v.verify(leaf, chain)
    assert result.ok, result.message


def test_ignore_unavailable_still_fails_revoked(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-revoked.pem")
    assert verifier(pki, "ignore-unavailable").verify(leaf, chain).reason == REVOKED_REASON


def test_skip_mode_does_not_check_revocation(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-revoked.pem")
    assert verifier(pki, "skip").verify(leaf, chain).ok


def test_no_revocation_checker_means_no_revocation_check(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-revoked.pem")
    assert CertificateVerifier(ca_entries(pki), None).verify(leaf, chain).ok


def test_crl_past_next_update_is_unknown(pki: Pki) -> None:
    leaf, chain = pki.leaf("client.pem")
    crl = parse_crls(pki.crl.read_bytes())[0]
    later = crl.next_update_utc + timedelta(seconds=1)
    assert verifier(pki, "strict").verify(leaf, chain, now=later).reason == REVOCATION_UNKNOWN
    assert "expired at" in verifier(pki, "strict").verify(leaf, chain, now=later).message
    assert verifier(pki, "ignore-unavailable").verify(leaf, chain, now=later).ok
    # At nextUpdate itself the CRL is still current.
    assert verifier(pki, "strict").verify(leaf, chain, now=crl.next_update_utc).ok


def test_a_stale_crl_still_proves_a_revocation(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-revoked.pem")
    crl = parse_crls(pki.crl.read_bytes())[0]
    later = crl.next_update_utc + timedelta(days=1)
    assert verifier(pki, "strict").verify(leaf, chain, now=later).reason == REVOKED_REASON


def test_a_stale_hold_is_not_a_revocation(pki: Pki, tmp_path: Path) -> None:
    leaf, chain = pki.leaf("client.pem")
    crl = make_crl(pki.intermediate.cert.subject, pki.intermediate, [leaf.serial_number],
                   reason=x509.ReasonFlags.certificate_hold)
    path = write(tmp_path / "hold.crl", crl)
    assert verifier(pki, "strict", path).verify(leaf, chain).reason == REVOKED_REASON
    later = crl.next_update_utc + timedelta(seconds=1)
    assert verifier(pki, "strict", path).verify(leaf, chain, now=later).reason == REVOCATION_UNKNOWN


def test_crl_with_this_update_in_the_future_is_unknown(pki: Pki, tmp_path: Path) -> None:
    leaf, chain = pki.leaf("client.pem")
    crl = make_crl(pki.intermediate.cert.subject, pki.intermediate,
                   this_update=now() + timedelta(days=1))
    path = write(tmp_path / "future.crl", crl)
    result = load_crls([path], [pki.root.cert, pki.intermediate.cert])
    assert not result.errors
    assert [p.severity for p in result.problems] == ["warning"]
    assert "not valid before" in result.problems[0].message
    verdict = verifier(pki, "strict", path).verify(leaf, chain)
    assert verdict.reason == REVOCATION_UNKNOWN
    assert "not valid before" in verdict.message


def test_the_freshest_current_crl_decides(pki: Pki, tmp_path: Path) -> None:
    leaf, chain = pki.leaf("client.pem")
    old = make_crl(pki.intermediate.cert.subject, pki.intermediate, [leaf.serial_number],
                   this_update=now() - timedelta(days=2), number=5,
                   reason=x509.ReasonFlags.certificate_hold)
    new = make_crl(pki.intermediate.cert.subject, pki.intermediate, [],
                   this_update=now() - timedelta(days=1), number=6)
    paths = write(tmp_path / "old.crl", old), write(tmp_path / "new.crl", new)
    assert verifier(pki, "strict", *paths).verify(leaf, chain).ok   # released from hold


def test_a_revoked_intermediate_revokes_its_clients(pki: Pki, tmp_path: Path) -> None:
    leaf, chain = pki.leaf("client.pem")
    root_crl = make_crl(pki.root.cert.subject, pki.root, [pki.intermediate.cert.serial_number])
    path = write(tmp_path / "root.crl", root_crl)
    result = verifier(pki, "strict", pki.crl, path).verify(leaf, chain)
    assert result.reason == REVOKED_REASON
    assert "tlsgate dev intermediate CA" in result.message
    # A root CRL that does not list the intermediate: fine, and the intermediate was checked.
    clean = write(tmp_path / "root-clean.crl", make_crl(pki.root.cert.subject, pki.root, []))
    ok = verifier(pki, "strict", pki.crl, clean).verify(leaf, chain)
    assert ok.ok and "2 certificates checked" in ok.message


def test_a_stale_root_crl_makes_the_intermediate_unknown(pki: Pki, tmp_path: Path) -> None:
    """The operator loaded a root CRL: once it is stale, the intermediate's status is unknown."""
    leaf, chain = pki.leaf("client.pem")
    path = write(tmp_path / "root-old.crl", make_crl(
        pki.root.cert.subject, pki.root, [],
        this_update=now() - timedelta(days=10), next_update=now() - timedelta(days=1)))
    result = verifier(pki, "strict", pki.crl, path).verify(leaf, chain)
    assert result.reason == REVOCATION_UNKNOWN
    assert "tlsgate dev root CA" in result.message


def test_checker_answers_per_certificate(pki: Pki) -> None:
    c = checker(pki, "strict", pki.crl)
    valid, _ = pki.leaf("client.pem")
    revoked, _ = pki.leaf("client-revoked.pem")
    assert c.check(valid, pki.intermediate.cert).state is GOOD
    assert c.check(revoked, pki.intermediate.cert).state is REVOKED
    unknown = c.check(pki.intermediate.cert, pki.root.cert)
    assert unknown.state is UNKNOWN and not unknown.crl_available
    assert c.has_crl_for(pki.intermediate.cert) and not c.has_crl_for(pki.root.cert)
    # Same name, other key: the CRL does not apply.
    impostor = issue(Issuer(pki.root.cert, pki.root.key), "tlsgate dev intermediate CA", ca=True)
    assert c.check(valid, impostor.cert).state is UNKNOWN


def test_checker_rejects_unknown_modes_and_unverified_crls(pki: Pki) -> None:
    with pytest.raises(ValueError):
        RevocationChecker((), (), "lenient")
    raw = parse_crls(pki.crl.read_bytes())[0]
    assert RevocationChecker([raw], [pki.intermediate.cert]).crls[0].issuer == pki.intermediate.cert
    with pytest.raises(CRLLoadError):
        RevocationChecker([raw], [pki.root.cert])


# -- loading CRLs ----------------------------------------------------------------------------


def test_crl_in_der(pki: Pki) -> None:
    der = pki.directory / "intermediate.crl.der"
    assert not der.read_bytes().startswith(b"-----")
    (loaded,) = load_crl_file(der, [pki.root.cert, pki.intermediate.cert])
    assert loaded.issuer == pki.intermediate.cert
    leaf, chain = pki.leaf("client-revoked.pem")
    assert verifier(pki, "strict", der).verify(leaf, chain).reason == REVOKED_REASON
    valid, chain = pki.leaf("client.pem")
    assert verifier(pki, "strict", der).verify(valid, chain).ok


def test_several_crls_in_one_pem_file(pki: Pki, tmp_path: Path) -> None:
    root_crl = make_crl(pki.root.cert.subject, pki.root, [])
    path = tmp_path / "bundle.crl"
    path.write_bytes(pki.crl.read_bytes() + root_crl.public_bytes(serialization.Encoding.PEM))
    loaded = load_crl_file(path, [pki.root.cert, pki.intermediate.cert])
    assert [c.issuer for c in loaded] == [pki.intermediate.cert, pki.root.cert]


def test_crl_signed_by_another_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    forged = make_crl(pki.intermediate.cert.subject, pki.foreign_root)
    path = write(tmp_path / "forged.crl", forged)
    with pytest.raises(CRLLoadError, match="signature does not verify"):
        load_crl_file(path, [pki.root.cert, pki.intermediate.cert])
    result = load_crls([pki.crl, path], [pki.root.cert, pki.intermediate.cert])
    assert len(result.crls) == 1
    (problem,) = result.errors
    assert problem.index == 1 and problem.path == path and not problem.kept_previous
    assert "signature does not verify" in problem.message


def test_crl_from_an_issuer_outside_the_store_is_refused(pki: Pki, tmp_path: Path) -> None:
    crl = make_crl(pki.foreign_root.cert.subject, pki.foreign_root)
    foreign = write(tmp_path / "foreign.crl", crl)
    with pytest.raises(CRLLoadError, match="not in the CA store"):
        load_crl_file(foreign, [pki.root.cert, pki.intermediate.cert])


def test_crl_issuer_without_crl_sign_is_refused(pki: Pki, tmp_path: Path) -> None:
    signer = issue(None, "not a CRL signer")   # a leaf: KeyUsage digitalSignature only
    path = write(tmp_path / "leaf-signed.crl", make_crl(signer.cert.subject, signer))
    with pytest.raises(CRLLoadError, match="cRLSign"):
        load_crl_file(path, [signer.cert])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "empty"),
        (b"hello", "not a CRL"),
        (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "not a valid CRL"),
    ],
)
def test_files_that_are_not_crls(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.crl"
    path.write_bytes(content)
    with pytest.raises(CRLLoadError, match=words):
        load_crl_file(path, [])


def test_certificate_given_as_crl(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(CRLLoadError, match="CERTIFICATE"):
        load_crl_file(pki.directory / "root.pem", [pki.root.cert])
    der = tmp_path / "root.der"
    der.write_bytes(pki.root.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(CRLLoadError, match="certificate, not a CRL"):
        load_crl_file(der, [pki.root.cert])
    with pytest.raises(CRLLoadError, match="file not found"):
        load_crl_file(tmp_path / "missing.crl", [pki.root.cert])


def test_delta_crls_are_refused(pki: Pki, tmp_path: Path) -> None:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.intermediate.cert.subject)
        .last_update(now())
        .next_update(now() + timedelta(days=1))
        .add_extension(x509.DeltaCRLIndicator(1), True)
    )
    path = write(tmp_path / "delta.crl", builder.sign(pki.intermediate.key, hashes.SHA256()))
    with pytest.raises(CRLLoadError, match="delta"):
        load_crl_file(path, [pki.intermediate.cert])


def test_reload_keeps_the_previous_crl_when_the_file_breaks(pki: Pki, tmp_path: Path) -> None:
    ca = [pki.root.cert, pki.intermediate.cert]
    path = tmp_path / "live.crl"
    path.write_bytes(pki.crl.read_bytes())
    first = load_crls([path], ca)
    assert len(first.crls) == 1 and not first.problems
    path.write_bytes(b"garbage")
    second = load_crls([path], ca, previous=first.crls)
    assert second.crls == first.crls
    (problem,) = second.errors
    assert problem.kept_previous
    # ...but not when its issuer has left the CA store.
    third = load_crls([path], [pki.root.cert], previous=first.crls)
    assert third.crls == () and not third.errors[0].kept_previous


def test_reload_refuses_an_older_crl(pki: Pki, tmp_path: Path) -> None:
    ca = [pki.root.cert, pki.intermediate.cert]
    path = tmp_path / "live.crl"
    write(path, make_crl(pki.intermediate.cert.subject, pki.intermediate, [], number=7))
    first = load_crls([path], ca)
    write(path, make_crl(pki.intermediate.cert.subject, pki.intermediate, [], number=3))
    second = load_crls([path], ca, previous=first.crls)
    assert second.crls == first.crls
    assert second.problems[0].severity == "warning" and "older" in second.problems[0].message
    write(path, make_crl(pki.intermediate.cert.subject, pki.intermediate, [], number=8))
    assert load_crls([path], ca, previous=first.crls).crls[0].number == 8


def test_checker_from_settings(pki: Pki, tmp_path: Path) -> None:
    settings = RevocationSettings(mode="ignore-unavailable",
                                  crl_files=(pki.crl, tmp_path / "missing.crl"))
    c, problems = RevocationChecker.from_settings(settings, ca_entries(pki))
    assert c.mode == "ignore-unavailable"
    assert [type(crl) for crl in c.crls] == [LoadedCRL]
    assert [(p.index, p.message) for p in problems] == [(1, "file not found")]


# -- dates ---------------------------------------------------------------------------------


def test_expired_intermediate_is_expired(pki: Pki) -> None:
    t = now()
    ca = issue(pki.root, "short-lived CA", ca=True,
               not_before=t - timedelta(days=60), not_after=t - timedelta(days=1))
    leaf = issue(ca, "client of an expired CA", not_before=t - timedelta(days=30))
    v = CertificateVerifier(ca_entries(pki), None)
    result = v.verify(leaf.cert, [ca.cert])
    assert result.reason == EXPIRED
    assert "intermediate CA certificate 'CN=short-lived CA'" in result.message
    assert result.path == (leaf.cert, ca.cert, pki.root.cert)


def test_expired_and_untrusted_is_not_trusted(pki: Pki) -> None:
    t = now()
    stranger = issue(None, "expired stranger", not_before=t - timedelta(days=10),
                     not_after=t - timedelta(days=1))
    assert CertificateVerifier(ca_entries(pki), None).verify(stranger.cert).reason == NOT_TRUSTED


def test_verify_at_another_time(pki: Pki) -> None:
    leaf, chain = pki.leaf("client-notyet.pem")
    v = verifier(pki, "skip")
    assert v.verify(leaf, chain).reason == NOT_YET_VALID
    assert v.verify(leaf, chain, now=leaf.not_valid_before_utc + timedelta(hours=1)).ok
    expired, chain = pki.leaf("client-expired.pem")
    assert v.verify(expired, chain, now=expired.not_valid_after_utc - timedelta(days=1)).ok
    # Naive datetimes are UTC.
    naive = (expired.not_valid_after_utc - timedelta(days=1)).replace(tzinfo=None)
    assert verifier(pki, "skip").verify(expired, chain, now=naive).ok


# -- extended key usage and extensions --------------------------------------------------------


def test_server_auth_only_is_not_trusted(pki: Pki) -> None:
    """build_client_verifier() requires clientAuth in an EKU that is present."""
    leaf, chain = pki.leaf("server.pem")
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    result = verifier(pki).verify(leaf, chain)
    assert result.reason == NOT_TRUSTED
    assert "clientAuth" in result.message


@pytest.mark.parametrize(
    ("eku", "ok"),
    [
        (None, True),                                                  # no EKU: any usage
        ([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], True),
        ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], False),         # the library's choice
        ([ExtendedKeyUsageOID.CODE_SIGNING], False),
    ],
)
def test_extended_key_usage(pki: Pki, eku, ok: bool) -> None:
    leaf = issue(pki.intermediate, "eku-client", eku=eku)
    result = CertificateVerifier(ca_entries(pki), None).verify(leaf.cert)
    assert result.ok is ok
    if not ok:
        assert result.reason == NOT_TRUSTED


def test_client_certificate_without_san_is_accepted(pki: Pki) -> None:
    leaf = issue(pki.intermediate, "cn-only", san=False)
    assert CertificateVerifier(ca_entries(pki), None).verify(leaf.cert).ok


def test_ca_certificate_as_client_is_not_trusted(pki: Pki) -> None:
    result = CertificateVerifier(ca_entries(pki), None).verify(pki.intermediate.cert)
    assert result.reason == NOT_TRUSTED


# -- the cache -------------------------------------------------------------------------------


class Counting:
    """Wraps the verifier's uncached path; counts real verifications."""

    def __init__(self, v: CertificateVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        inner = v._verify_uncached

        def wrapper(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        monkeypatch.setattr(v, "_verify_uncached", wrapper)


def test_cache_hit_does_no_work(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = verifier(pki)
    counting = Counting(v, monkeypatch)
    t = now()
    first = v.verify(leaf, chain, now=t)
    second = v.verify(leaf, chain, now=t + timedelta(seconds=10))
    assert second is first and counting.calls == 1
    # Another chain, or VerifyNoRevocation(), is another question.
    v.verify(leaf, (), now=t)
    v.verify(leaf, chain, check_revocation=False, now=t)
    assert counting.calls == 3
    v.verify(leaf, chain, check_revocation=False, now=t)
    assert counting.calls == 3
    # Failures are cached as well.
    bad, bad_chain = pki.leaf("client-selfsigned.pem")
    assert v.verify(bad, bad_chain, now=t) is v.verify(bad, bad_chain, now=t)
    assert counting.calls == 4


def test_clearing_the_cache_forgets_what_each_certificate_remembers(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = verifier(pki)
    counting = Counting(v, monkeypatch)
    assert v.verify(leaf, chain) is v.verify(leaf, chain)   # the second from the object's memo
    assert counting.calls == 1
    v.clear_cache()
    v.verify(leaf, chain)
    assert counting.calls == 2
    # The same certificate in a new object (another connection's) finds the shared cache.
    copy = x509.load_der_x509_certificate(leaf.public_bytes(serialization.Encoding.DER))
    v.verify(copy, chain)
    assert counting.calls == 2


def test_cache_expires_after_the_ttl(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = verifier(pki, cache_ttl=300)
    counting = Counting(v, monkeypatch)
    t = now()
    v.verify(leaf, chain, now=t)
    v.verify(leaf, chain, now=t + timedelta(seconds=299))
    assert counting.calls == 1
    v.verify(leaf, chain, now=t + timedelta(seconds=301))
    assert counting.calls == 2


def test_cache_expires_at_not_after(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, chain = pki.leaf("client.pem")
    v = verifier(pki, "skip", cache_ttl=10 * 365 * 86400)
    counting = Counting(v, monkeypatch)
    t = now()
    assert v.verify(leaf, chain, now=t).ok
    assert v.verify(leaf, chain, now=leaf.not_valid_after_utc).ok
    assert counting.calls == 1
    late = v.verify(leaf, chain, now=leaf.not_valid_after_utc + timedelta(seconds=1))
    assert counting.calls == 2
    assert late.reason == EXPIRED


def test_cache_expires_at_the_crl_next_update(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf, chain = pki.leaf("client.pem")
    next_update = parse_crls(pki.crl.read_bytes())[0].next_update_utc
    v = verifier(pki, "strict", cache_ttl=10 * 365 * 86400)
    counting = Counting(v, monkeypatch)
    assert v.verify(leaf, chain).ok
    assert v.verify(leaf, chain, now=next_update).ok
    assert counting.calls == 1
    stale = v.verify(leaf, chain, now=next_update + timedelta(seconds=1))
    assert counting.calls == 2
    assert stale.reason == REVOCATION_UNKNOWN


def test_cache_expires_when_a_certificate_becomes_valid(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaf, chain = pki.leaf("client-notyet.pem")
    v = verifier(pki, "skip", cache_ttl=10 * 365 * 86400)
    counting = Counting(v, monkeypatch)
    assert v.verify(leaf, chain).reason == NOT_YET_VALID
    assert v.verify(leaf, chain, now=leaf.not_valid_before_utc).ok
    assert counting.calls == 2


def test_cache_is_bounded_and_per_verifier(pki: Pki) -> None:
    v = CertificateVerifier(ca_entries(pki), None, cache_size=3)
    leaves = [issue(pki.intermediate, f"c{i}").cert for i in range(5)]
    for leaf in leaves:
        assert v.verify(leaf).ok
    assert v.cache_len == 3
    other = v.with_revocation(checker(pki, "strict", pki.crl))
    assert other.cache_len == 0
    revoked, chain = pki.leaf("client-revoked.pem")
    assert v.verify(revoked, chain).ok                     # no checker: not checked
    assert other.verify(revoked, chain).reason == REVOKED_REASON
