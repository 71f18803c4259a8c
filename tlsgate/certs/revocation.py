"""Certificate revocation from CRLs: loading them safely, and asking them about a certificate.

Loading (:func:`load_crl_file`, :func:`load_crls`)
    ``[revocation] crl_files`` may be PEM (one or more ``X509 CRL`` blocks) or DER, whatever the
    file name says. A CRL is only ever used after its signature has been verified with the
    public key of its issuer, and that issuer has to be one of the CA store's certificates
    (``[[ca_certificate]]``, root or intermediate): found by name, preferring the certificate
    whose Subject Key Identifier equals the CRL's Authority Key Identifier, and accepted only
    when the signature verifies with its key (a key-identifier match alone proves nothing). An
    issuer whose KeyUsage lacks ``cRLSign`` is refused, as RFC 5280 §6.3.3 (f) asks. So are CRL
    kinds that would need more than a full, direct CRL to be judged correctly: delta CRLs,
    indirect CRLs, CRLs partitioned by revocation reason, and unrecognised critical
    extensions. Every refusal is a :class:`CRLLoadError` whose message is written for the
    operator; :func:`load_crls` collects them per file as :class:`CRLProblem` records that the
    config loader can place on the ``crl_files`` element they came from.

    Reloads: :func:`load_crls` takes the CRLs that are in use now (``previous``). A file that
    cannot be read or verified any more keeps its previous CRLs (the problem is still
    reported, with ``kept_previous``), and a file that was replaced by an *older* CRL of the
    same CA (lower CRL number or earlier thisUpdate) is refused in favour of the newer one, so
    an attacker who can write the file cannot roll a revocation back.

Checking (:class:`RevocationChecker`)
    ``check(cert, issuer)`` answers GOOD, REVOKED or UNKNOWN for one certificate, using the
    CRLs signed by that issuer's name *and key*. A CRL is current while
    ``thisUpdate <= now <= nextUpdate``; a CRL past its nextUpdate, or one whose thisUpdate is
    still in the future, cannot vouch that a certificate is good (UNKNOWN). One exception:
    a certificate that a stale CRL lists as revoked (for any reason but ``certificateHold``) is
    REVOKED, because a later CRL cannot un-revoke it. Among several current CRLs for an issuer,
    the freshest (thisUpdate, then CRL number) decides.

    ``check_path(path)`` applies this to a verified chain (leaf first, trust anchor last) the
    way a gateway without network access can honour .NET's ``X509RevocationFlag.ExcludeRoot``:
    the trust anchor is never checked; the leaf always is (no CRL from its issuer = UNKNOWN);
    a CA certificate in between is checked when a CRL from *its* issuer is loaded (so a
    loaded root CRL can revoke the intermediate), and otherwise is not judged. .NET with
    ``RevocationMode.Online`` would call such an intermediate "unknown" when it cannot fetch its
    issuer's CRL; doing the same offline would make every client fail in strict mode as soon as
    the root CA publishes no CRL file the operator could load, which nobody expects. Once a
    ``fetcher`` is configured (CDP download, a later issue), a CA certificate that advertises a
    CRL distribution point is held to the same rule as the leaf.

    ``mode`` says what the caller does with the answer: ``"strict"`` fails on REVOKED and
    UNKNOWN (``ClientCertificateRevocationUnknown``), ``"ignore-unavailable"`` fails on REVOKED
    only, ``"skip"`` does not check (``check_path`` answers GOOD without looking).

Network: none here. ``fetcher`` is the seam for CDP downloads (see :class:`CRLFetcher`); it
defaults to ``None``, meaning "no network, only the loaded files".
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsgate.certs.identity import dotnet_name, serial_number_hex
from tlsgate.config.model import (
    REVOCATION_MODES,
    CACertificateEntry,
    RevocationSettings,
)

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


class CRLLoadError(Exception):
    """A CRL that cannot be used; the message says why, for a human (no file name in it)."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class LoadedCRL:
    """A CRL whose signature has been verified with ``issuer``'s public key."""

    crl: x509.CertificateRevocationList
    issuer: x509.Certificate
    source: str = ""                     # file path (or, later, URL) for messages and reloads

    @property
    def this_update(self) -> datetime:
        return self.crl.last_update_utc

    @property
    def next_update(self) -> datetime | None:
        return self.crl.next_update_utc

    @property
    def number(self) -> int:
        """The CRL number, -1 when the CRL has none."""
        try:
            return self.crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            return -1

    def is_current(self, now: datetime) -> bool:
        """``thisUpdate <= now <= nextUpdate`` (no nextUpdate: current from thisUpdate on)."""
        return self.this_update <= now and (self.next_update is None or now <= self.next_update)

    def covers(self, certificate: x509.Certificate) -> bool:
        """Whether this CRL's scope (IssuingDistributionPoint) includes ``certificate``.

        Call only with certificates issued by this CRL's issuer. Without an IDP extension a CRL
        covers every certificate of its issuer.
        """
        idp = _issuing_distribution_point(self.crl)
        if idp is None:
            return True
        is_ca = _is_ca(certificate)
        if idp.only_contains_user_certs and is_ca:
            return False
        if idp.only_contains_ca_certs and not is_ca:
            return False
        if idp.full_name:
            names = _distribution_point_names(certificate)
            # A certificate without a CDP is judged by its issuer's CRLs whatever their DP name.
            if names is not None and not set(idp.full_name) & names:
                return False
        return True


class RevocationState(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


GOOD = RevocationState.GOOD
REVOKED = RevocationState.REVOKED
UNKNOWN = RevocationState.UNKNOWN


@dataclass(frozen=True)
class RevocationStatus:
    """The answer about one certificate (or, from ``check_path``, about a whole chain).

    ``reason`` is a sentence for logs and error messages. ``valid_until`` is when the answer
    may change (the deciding CRL's nextUpdate, or the thisUpdate of a CRL that is not valid
    yet); ``None`` means no known moment. ``crl_available`` is False when no loaded CRL at all
    covers the certificate, as opposed to a CRL that exists but is stale.
    """

    state: RevocationState
    reason: str
    valid_until: datetime | None = None
    crl_available: bool = True
    certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)


class CRLFetcher(Protocol):
    """The seam for CRL distribution point downloads (not implemented yet).

    ``crls_for`` must not block: verification runs on the event loop, once per new client.
    An implementation returns the CRLs it has already downloaded (and verified with
    ``issuer``'s key) for the certificate's CDP URLs, and schedules a background download
    when it has none or they are about to expire.
    """

    def crls_for(
        self, certificate: x509.Certificate, issuer: x509.Certificate
    ) -> Sequence[LoadedCRL]: ...


@dataclass(frozen=True)
class CRLProblem:
    """Something wrong with one ``crl_files`` entry; ``index`` is its position in the list."""

    index: int
    path: Path
    message: str
    severity: str = "error"              # "error" | "warning"
    kept_previous: bool = False          # the CRLs loaded before from this file stay in use


@dataclass(frozen=True)
class CRLLoadResult:
    crls: tuple[LoadedCRL, ...]
    problems: tuple[CRLProblem, ...]

    @property
    def errors(self) -> tuple[CRLProblem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")


# -- loading -------------------------------------------------------------------------------


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in ``data``: PEM (one or more ``X509 CRL`` blocks) or a single DER CRL."""
    if not data.strip():
        raise CRLLoadError("the file is empty")
    if b"-----BEGIN " in data:
        blocks = _PEM_CRL.findall(data)
        if not blocks:
            labels = sorted({m.decode() for m in _PEM_LABEL.findall(data)})
            found = f" (found {', '.join(labels)})" if labels else ""
            raise CRLLoadError(f"no complete PEM 'X509 CRL' block in the file{found}")
        crls = []
        for number, block in enumerate(blocks, start=1):
            try:
                crls.append(x509.load_pem_x509_crl(block))
            except ValueError:
                raise CRLLoadError(f"PEM block #{number} is not a valid CRL") from None
        return crls
    try:
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        pass
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        raise CRLLoadError("not a CRL (neither PEM nor DER)") from None
    raise CRLLoadError("the file holds a certificate, not a CRL")


def verify_crl(
    crl: x509.CertificateRevocationList,
    ca_certificates: Iterable[x509.Certificate],
    *,
    source: str = "",
) -> LoadedCRL:
    """Check that ``crl`` can be used and find the CA certificate that signed it.

    Raises :class:`CRLLoadError` for an unsupported kind of CRL, an issuer that is not in
    ``ca_certificates``, an issuer not allowed to sign CRLs, or a signature that does not verify.
    """
    _check_supported(crl)
    issuer_name = dotnet_name(crl.issuer)
    named = [ca for ca in ca_certificates if ca.subject == crl.issuer]
    if not named:
        raise CRLLoadError(
            f"the CRL's issuer '{issuer_name}' is not in the CA store; add its certificate as a "
            "[[ca_certificate]] (root or intermediate)"
        )
    aki = _authority_key_id(crl)
    # Try the certificate whose SKI matches the CRL's AKI first; the signature decides.
    named.sort(key=lambda ca: aki is None or _subject_key_id(ca) != aki)
    for candidate in named:
        if _signature_valid(crl, candidate):
            usage = _key_usage(candidate)
            if usage is not None and not usage.crl_sign:
                raise CRLLoadError(
                    f"the CA certificate '{issuer_name}' may not sign CRLs "
                    "(its KeyUsage lacks cRLSign)"
                )
            return LoadedCRL(crl, candidate, source)
    hint = ""
    if aki is not None and not any(_subject_key_id(ca) == aki for ca in named):
        hint = " (and its authority key identifier matches none of them)"
    count = "the CA certificate" if len(named) == 1 else f"any of the {len(named)} CA certificates"
    raise CRLLoadError(
        f"the CRL's signature does not verify with the key of {count} named "
        f"'{issuer_name}' in the CA store{hint}"
    )


def load_crl_file(
    path: Path, ca_certificates: Iterable[x509.Certificate]
) -> tuple[LoadedCRL, ...]:
    """Read, parse and verify every CRL in ``path``; :class:`CRLLoadError` if any is unusable."""
    data = _read(Path(path))
    ca_certificates = tuple(ca_certificates)
    crls = parse_crls(data)
    loaded = []
    for number, crl in enumerate(crls, start=1):
        try:
            loaded.append(verify_crl(crl, ca_certificates, source=str(path)))
        except CRLLoadError as error:
            if len(crls) == 1:
                raise
            raise CRLLoadError(f"CRL #{number} in the file: {error.message}") from None
    return tuple(loaded)


def load_crls(
    paths: Sequence[Path],
    ca_certificates: Iterable[x509.Certificate],
    *,
    previous: Iterable[LoadedCRL] = (),
    now: datetime | None = None,
) -> CRLLoadResult:
    """Load every file of ``crl_files``; never raises for a bad file, reports it instead.

    ``previous`` are the CRLs in use before this (re)load. A file that fails now keeps its
    previous CRLs (as long as their issuer is still in the CA store); a file whose new CRL is
    older than the previous one of the same CA keeps the previous one. Warnings tell about
    CRLs that load but cannot vouch for anything yet or any more (outside thisUpdate..nextUpdate).
    """
    now = _utc(now)
    ca_certificates = tuple(ca_certificates)
    by_source: dict[str, list[LoadedCRL]] = {}
    for old in previous:
        by_source.setdefault(old.source, []).append(old)
    crls: list[LoadedCRL] = []
    problems: list[CRLProblem] = []
    for index, path in enumerate(paths):
        path = Path(path)
        before = [c for c in by_source.get(str(path), ()) if c.issuer in ca_certificates]
        try:
            loaded = list(load_crl_file(path, ca_certificates))
        except CRLLoadError as error:
            problems.append(CRLProblem(index, path, error.message, "error", bool(before)))
            crls.extend(before)
            continue
        for position, new in enumerate(loaded):
            older_than = _newer_previous(new, before)
            if older_than is not None:
                loaded[position] = older_than
                problems.append(CRLProblem(
                    index, path,
                    f"the CRL of '{dotnet_name(new.crl.issuer)}' is older than the one in use "
                    f"(CRL number {new.number}, thisUpdate {_when(new.this_update)}); "
                    "keeping the newer one",
                    "warning", True,
                ))
            else:
                warning = _staleness_warning(new, now)
                if warning:
                    problems.append(CRLProblem(index, path, warning, "warning"))
        crls.extend(loaded)
    return CRLLoadResult(tuple(crls), tuple(problems))


def ca_certificates_of(entries: Iterable[CACertificateEntry]) -> tuple[x509.Certificate, ...]:
    """The certificates of ``[[ca_certificate]]`` entries, root and intermediate stores alike."""
    return tuple(cert for entry in entries for cert in entry.certificates)


# -- checking ------------------------------------------------------------------------------


class RevocationChecker:
    """Answers revocation questions from verified CRLs; immutable, build a new one to reload."""

    def __init__(
        self,
        crls: Iterable[LoadedCRL | x509.CertificateRevocationList] = (),
        ca_certificates: Iterable[x509.Certificate] = (),
        mode: str = "strict",
        *,
        fetcher: CRLFetcher | None = None,
    ) -> None:
        if mode not in REVOCATION_MODES:
            raise ValueError(f"mode must be one of {', '.join(REVOCATION_MODES)}, not {mode!r}")
        self.mode = mode
        self.fetcher = fetcher
        ca_certificates = tuple(ca_certificates)
        loaded = []
        for crl in crls:
            if not isinstance(crl, LoadedCRL):
                crl = verify_crl(crl, ca_certificates)  # raises CRLLoadError
            loaded.append(crl)
        self.crls: tuple[LoadedCRL, ...] = tuple(loaded)
        self._by_issuer: dict[tuple[bytes, bytes], list[LoadedCRL]] = {}
        for crl in self.crls:
            self._by_issuer.setdefault(_issuer_key(crl.issuer), []).append(crl)

    @classmethod
    def from_settings(
        cls,
        settings: RevocationSettings,
        ca_entries: Iterable[CACertificateEntry],
        *,
        previous: Iterable[LoadedCRL] = (),
        fetcher: CRLFetcher | None = None,
        now: datetime | None = None,
    ) -> tuple[RevocationChecker, tuple[CRLProblem, ...]]:
        """A checker for a ``RevocationSettings`` and the ``CACertificateEntry`` records.

        Returns the problems too; the caller decides whether errors refuse the config.
        In ``skip`` mode the files are still loaded (and so checked), to catch mistakes early.
        """
        ca_certificates = ca_certificates_of(ca_entries)
        result = load_crls(settings.crl_files, ca_certificates, previous=previous, now=now)
        checker = cls(result.crls, ca_certificates, settings.mode, fetcher=fetcher)
        return checker, result.problems

    def has_crl_for(self, issuer: x509.Certificate) -> bool:
        """Whether any CRL signed by ``issuer`` (name and key) is loaded."""
        return _issuer_key(issuer) in self._by_issuer

    def check(
        self,
        certificate: x509.Certificate,
        issuer: x509.Certificate,
        *,
        now: datetime | None = None,
    ) -> RevocationStatus:
        """The revocation status of ``certificate``, issued (and signed) by ``issuer``."""
        now = _utc(now)
        name = f"'{dotnet_name(certificate.subject)}'"
        issuer_name = f"'{dotnet_name(issuer.subject)}'"
        candidates = list(self._by_issuer.get(_issuer_key(issuer), ()))
        if self.fetcher is not None:
            candidates.extend(self.fetcher.crls_for(certificate, issuer))
        covering = [crl for crl in candidates if crl.covers(certificate)]
        if not covering:
            return RevocationStatus(
                UNKNOWN, f"no CRL of {issuer_name} is loaded to check {name}",
                crl_available=False, certificate=certificate,
            )
        current = [crl for crl in covering if crl.is_current(now)]
        if current:
            crl = max(current, key=lambda c: (c.this_update, c.number))
            entry = crl.crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if entry is not None:
                return RevocationStatus(
                    REVOKED, _revoked_message(name, certificate, entry, crl),
                    crl.next_update, certificate=certificate,
                )
            return RevocationStatus(
                GOOD, f"{name} is not listed in the CRL of {issuer_name} "
                f"(valid until {_when(crl.next_update)})",
                crl.next_update, certificate=certificate,
            )
        # No current CRL: a revocation in a stale one still stands (except a hold).
        for crl in sorted(covering, key=lambda c: (c.this_update, c.number), reverse=True):
            entry = crl.crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if entry is not None and _entry_reason(entry) is not x509.ReasonFlags.certificate_hold:
                return RevocationStatus(
                    REVOKED, _revoked_message(name, certificate, entry, crl), None,
                    certificate=certificate,
                )
        future = [crl for crl in covering if crl.this_update > now]
        if future:
            soonest = min(crl.this_update for crl in future)
            expired = [crl for crl in covering if crl not in future]
            detail = f"the CRL of {issuer_name} is not valid before {_when(soonest)}"
            if expired:
                detail += " and the previous one has expired"
            return RevocationStatus(
                UNKNOWN, f"revocation status of {name} is unknown: {detail}", soonest,
                certificate=certificate,
            )
        latest = max(covering, key=lambda c: (c.next_update or now, c.number))
        return RevocationStatus(
            UNKNOWN, f"revocation status of {name} is unknown: the CRL of {issuer_name} "
            f"expired at {_when(latest.next_update)} (nextUpdate)",
            certificate=certificate,
        )

    def check_path(
        self, path: Sequence[x509.Certificate], *, now: datetime | None = None
    ) -> RevocationStatus:
        """The revocation status of a verified chain (leaf first, trust anchor last).

        REVOKED if any certificate is revoked, else UNKNOWN if the status of one that must be
        known is not (see the module documentation for which ones), else GOOD. In ``skip`` mode
        GOOD without looking.
        """
        if self.mode == "skip":
            return RevocationStatus(GOOD, "revocation is not checked ([revocation] mode = skip)")
        now = _utc(now)
        judged: list[RevocationStatus] = []
        for position, certificate in enumerate(path[:-1]):
            status = self.check(certificate, path[position + 1], now=now)
            if (
                position > 0
                and not status.crl_available
                and not self._ca_must_be_checked(certificate)
            ):
                continue
            judged.append(status)
        for state in (REVOKED, UNKNOWN):
            for status in judged:
                if status.state is state:
                    return status
        deadlines = [s.valid_until for s in judged if s.valid_until is not None]
        count = len(judged)
        return RevocationStatus(
            GOOD,
            f"not revoked ({count} certificate{'s' if count != 1 else ''} checked against CRLs)",
            min(deadlines) if deadlines else None,
        )

    def _ca_must_be_checked(self, certificate: x509.Certificate) -> bool:
        """A CA certificate with no CRL from its issuer: "unknown" only if it could be fetched."""
        return self.fetcher is not None and _distribution_point_names(certificate) is not None


# -- helpers -------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CRLLoadError("file not found") from None
    except IsADirectoryError:
        raise CRLLoadError("is a directory, not a file") from None
    except OSError as error:
        raise CRLLoadError(f"cannot read the file: {error.strerror}") from None


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "(no date)"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _issuer_key(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    """Name and key together: a CRL applies to certificates signed by the same name *and* key."""
    spki = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return issuer.subject.public_bytes(), spki


def _check_supported(crl: x509.CertificateRevocationList) -> None:
    for extension in crl.extensions:
        if isinstance(extension.value, x509.DeltaCRLIndicator):
            raise CRLLoadError("delta CRLs are not supported; use the CA's full (base) CRL")
        if extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
            raise CRLLoadError(
                f"the CRL has an unsupported critical extension ({extension.oid.dotted_string})"
            )
    idp = _issuing_distribution_point(crl)
    if idp is not None:
        if idp.indirect_crl:
            raise CRLLoadError("indirect CRLs (issued for another CA) are not supported")
        if idp.only_some_reasons:
            raise CRLLoadError("CRLs partitioned by revocation reason are not supported")
        if idp.only_contains_attribute_certs:
            raise CRLLoadError("the CRL only covers attribute certificates")


def _issuing_distribution_point(
    crl: x509.CertificateRevocationList,
) -> x509.IssuingDistributionPoint | None:
    try:
        return crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return None


def _distribution_point_names(certificate: x509.Certificate) -> set[x509.GeneralName] | None:
    """The full names of the certificate's CRL distribution points; None without a CDP."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    return {name for point in points for name in (point.full_name or ())}


def _authority_key_id(crl: x509.CertificateRevocationList) -> bytes | None:
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


def _subject_key_id(certificate: x509.Certificate) -> bytes | None:
    try:
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return ski.digest


def _key_usage(certificate: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _signature_valid(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign CRLs, or a mismatch of types
        return False


def _entry_reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _revoked_message(
    name: str, certificate: x509.Certificate, entry: x509.RevokedCertificate, crl: LoadedCRL
) -> str:
    reason = _entry_reason(entry)
    because = f", reason {reason.value}" if reason is not None else ""
    return (
        f"{name} (serial {serial_number_hex(certificate)}) was revoked on "
        f"{_when(entry.revocation_date_utc)}{because}, according to the CRL of "
        f"'{dotnet_name(crl.crl.issuer)}'"
    )


def _newer_previous(new: LoadedCRL, before: Sequence[LoadedCRL]) -> LoadedCRL | None:
    """The previous CRL of the same CA when it is newer than ``new`` (a rollback), else None."""
    same_ca = [old for old in before if _issuer_key(old.issuer) == _issuer_key(new.issuer)]
    for old in same_ca:
        if new.number >= 0 and old.number >= 0:
            if new.number < old.number:
                return old
        elif new.this_update < old.this_update:
            return old
    return None


def _staleness_warning(crl: LoadedCRL, now: datetime) -> str | None:
    issuer = f"'{dotnet_name(crl.crl.issuer)}'"
    if crl.this_update > now:
        return (
            f"the CRL of {issuer} is not valid before {_when(crl.this_update)} (thisUpdate); "
            "until then the certificates it covers have an unknown revocation status"
        )
    if crl.next_update is not None and now > crl.next_update:
        return (
            f"the CRL of {issuer} expired at {_when(crl.next_update)} (nextUpdate); the "
            "certificates it covers have an unknown revocation status until it is replaced"
        )
    return None


__all__ = [
    "GOOD",
    "REVOCATION_MODES",
    "REVOKED",
    "UNKNOWN",
    "CRLFetcher",
    "CRLLoadError",
    "CRLLoadResult",
    "CRLProblem",
    "LoadedCRL",
    "RevocationChecker",
    "RevocationState",
    "RevocationStatus",
    "ca_certificates_of",
    "load_crl_file",
    "load_crls",
    "parse_crls",
    "verify_crl",
]

