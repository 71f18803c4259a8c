"""``Verify()`` and ``VerifyNoRevocation()``: is a client certificate trusted, in date, unrevoked?

One :class:`CertificateVerifier` is built per configuration load from the ``[[ca_certificate]]``
entries and a :class:`~tlsgate.certs.revocation.RevocationChecker`; its cache lives and dies
with it, so a reload never serves a verdict made under the old CA store or CRLs.

Chain building is ``cryptography.x509.verification``'s (RFC 5280 path validation with the
CA/Browser-Forum "webpki" profile); nothing here builds chains by hand:

* trust anchors: the certificates of ``store = "root"`` entries. A self-signed client
  certificate placed there is trusted as itself, as API Management documents;
* untrusted intermediates: the ``store = "intermediate"`` entries plus the chain the client
  sent (for a session resumed from a ticket, which carries the leaf only, the chain it sent
  with that leaf before: ``tlsgate.tls.session`` remembers it). An intermediate is never an
  anchor: a chain must end at a root entry;
* ``build_client_verifier()`` requires, on the leaf, an ExtendedKeyUsage that contains
  ``clientAuth`` *when the extension is present*: no EKU means any usage; ``serverAuth`` alone,
  or ``anyExtendedKeyUsage`` alone, is refused (-> ``ClientCertificateNotTrusted``). It also
  refuses a leaf that is a CA (BasicConstraints ``cA``), and checks signatures, name chaining,
  CA extensions (BasicConstraints, KeyUsage keyCertSign, path length), RSA keys >= 2048 bits,
  and the validity dates of every certificate in the path;
* two webpki requirements are relaxed on the leaf, because client certificates in the field
  (and the ones API Management accepts) routinely lack them: a subjectAltName (many client
  certificates name their holder in the CN only) and an Authority Key Identifier (not needed
  to find the issuer). CA certificates keep the full webpki profile.

Reasons (SPEC §4), decided in this order:

1. ``ClientCertificateNotTrusted``: no path to a trusted root can be built, whatever the date.
   Trust comes before dates: an expired self-signed certificate is "not trusted", not merely
   "expired". The library only says "not valid at validation time" (for any certificate in the
   path), so when verification fails at ``now`` the path is built again at a moment the leaf
   *is* valid (``now`` clamped into its validity, then its notBefore, when the whole chain had
   to be valid at issuance). If that succeeds, the chain is trusted and the failure was a date:
2. ``ClientCertificateExpired`` / ``ClientCertificateNotYetValid``: the first certificate of
   that path, leaf first, that is outside its validity at ``now``. An expired (or not yet
   valid) *intermediate* gives the same reasons as the leaf: "the chain is out of date" is
   what the operator must fix, and .NET folds it into ``NotTimeValid`` as well. The message
   names the certificate.
3. ``ClientCertificateRevoked`` / ``ClientCertificateRevocationUnknown``: only for a trusted,
   in-date path, and only when revocation is checked (``check_revocation`` and a checker whose
   mode is not ``skip``); see :mod:`tlsgate.certs.revocation` for which certificates of the path
   are checked. ``ignore-unavailable`` turns "unknown" into success; ``revocation=None`` means
   "no revocation checking configured" (like ``skip``).

Caching: results are kept per (leaf SHA-256, chain SHA-256s, check_revocation), from the
moment they were computed until the earliest of: ``cache_ttl`` seconds, the notAfter of any
certificate in the path, the nextUpdate of a CRL that decided, the notBefore of a certificate
that is not valid yet. A returning client costs one SHA-256 per certificate and a dict lookup.
At most ``cache_size`` entries are kept (least recently used go first), failures included, so
a client hammering with a bad certificate does not cost a path validation per request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tlsgate.certs.identity import dotnet_name
from tlsgate.certs.revocation import (
    REVOKED,
    UNKNOWN,
    RevocationChecker,
    RevocationStatus,
)
from tlsgate.config.model import CA_STORES, CACertificateEntry

NOT_TRUSTED = "ClientCertificateNotTrusted"
EXPIRED = "ClientCertificateExpired"
NOT_YET_VALID = "ClientCertificateNotYetValid"
REVOKED_REASON = "ClientCertificateRevoked"
REVOCATION_UNKNOWN = "ClientCertificateRevocationUnknown"
REASONS = (NOT_TRUSTED, EXPIRED, NOT_YET_VALID, REVOKED_REASON, REVOCATION_UNKNOWN)

DEFAULT_CACHE_TTL = 300.0
DEFAULT_CACHE_SIZE = 10_000

# One microsecond: validity ends are inclusive (RFC 5280 notAfter, CRL nextUpdate), cache
# expiry is exclusive.
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on one client certificate.

    ``reason`` is None exactly when ``ok``. ``path`` is the chain the library built, leaf first,
    trust anchor last: for successes, and for failures that happened after a path was found
    (expired, not yet valid, revoked, unknown); empty when no trusted path exists.
    """

    ok: bool
    reason: str | None
    message: str
    path: tuple[x509.Certificate, ...] = field(default=(), repr=False)


@dataclass
class _CacheEntry:
    result: VerifyResult
    valid_from: float       # POSIX timestamps: comparing floats is what a cache hit costs
    expires: float


class _CertificateMemo:
    """A certificate object's hashes and its latest verdicts (by ``check_revocation``)."""

    __slots__ = ("certificate", "chain", "chain_identities", "prints", "verdicts", "epoch")

    def __init__(self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...],
                 chain_identities: tuple[int, ...], prints: tuple) -> None:
        self.certificate = certificate
        self.chain = chain                  # held, so the identities stay unique
        self.chain_identities = chain_identities
        self.prints = prints
        self.verdicts: dict[bool, _CacheEntry] = {}
        self.epoch = 0

    def remember(self, check_revocation: bool, entry: _CacheEntry, epoch: int) -> None:
        if epoch != self.epoch:
            self.verdicts.clear()
            self.epoch = epoch
        self.verdicts[check_revocation] = entry


def _extension_policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy): webpki defaults, SAN and AKI optional on the leaf."""
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    )
    return ExtensionPolicy.webpki_defaults_ca(), ee


class CertificateVerifier:
    """Verifies client certificates against one CA store and one set of CRLs."""

    def __init__(
        self,
        ca_entries: Iterable[CACertificateEntry],
        revocation: RevocationChecker | None = None,
        *,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        roots: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for entry in ca_entries:
            if entry.store not in CA_STORES:
                raise ValueError(f"CA certificate {entry.id!r}: unknown store {entry.store!r}")
            (roots if entry.store == "root" else intermediates).extend(entry.certificates)
        self._roots = tuple(roots)
        self._intermediates = tuple(intermediates)
        self._store = Store(list(roots)) if roots else None
        self._ca_policy, self._ee_policy = _extension_policies()
        self.revocation = revocation
        self._cache_ttl = timedelta(seconds=cache_ttl)
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple, _CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._certificate_memo: dict[int, _CertificateMemo] = {}
        self._epoch = 0

    def with_revocation(self, revocation: RevocationChecker | None) -> CertificateVerifier:
        """The same CA store with other CRLs (e.g. after a CRL file changed); a fresh cache."""
        clone = object.__new__(CertificateVerifier)
        clone.__dict__.update(self.__dict__)
        clone.revocation = revocation
        clone._cache = OrderedDict()
        clone._lock = threading.Lock()
        clone._certificate_memo = {}
        return clone

    # -- public API --------------------------------------------------------------------------

    def verify(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        *,
        check_revocation: bool = True,
        now: datetime | None = None,
    ) -> VerifyResult:
        """Verify ``certificate`` with the ``chain`` the client sent (leaf excluded or not).

        ``check_revocation=False`` is ``VerifyNoRevocation()``. ``now`` (aware, or naive UTC)
        defaults to the current time.
        """
        moment = time.time() if now is None else _utc(now).timestamp()
        chain = tuple(chain)
        memo = self._memo(certificate, chain)
        # The verdict this certificate object got last, while still valid: the common case
        # (every request on a connection asks again) costs no lock and no cache lookup.
        recent = memo.verdicts.get(check_revocation)
        if recent is not None and recent.valid_from <= moment < recent.expires and \
                memo.epoch == self._epoch:
            return recent.result
        key = (*memo.prints, check_revocation)
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None and entry.valid_from <= moment < entry.expires:
                self._cache.move_to_end(key)
                memo.remember(check_revocation, entry, self._epoch)
                return entry.result
        now = datetime.fromtimestamp(moment, UTC)
        result, expires = self._verify_uncached(certificate, chain, check_revocation, now)
        entry = _CacheEntry(result, moment, min(expires, now + self._cache_ttl).timestamp())
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        memo.remember(check_revocation, entry, self._epoch)
        return result

    def verify_bool(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        check_revocation: bool = True,
    ) -> bool:
        """``Verify()`` (``check_revocation=True``) / ``VerifyNoRevocation()`` (False)."""
        return self.verify(certificate, chain, check_revocation=check_revocation).ok

    def _memo(self, certificate: x509.Certificate,
              chain: tuple[x509.Certificate, ...]) -> _CertificateMemo:
        """What is remembered about this certificate object with this chain.

        Hashing costs ~15 µs a certificate, more than the cache lookup it keys. Requests on
        one connection pass the same objects, so identity finds them again; the memo holds
        the objects themselves, so an ``id`` cannot be reused while its entry exists."""
        identities = tuple(map(id, chain))
        memo = self._certificate_memo.get(id(certificate))
        if memo is not None and memo.certificate is certificate and \
                memo.chain_identities == identities:
            return memo
        prints = (_fingerprint(certificate), tuple(map(_fingerprint, chain)))
        memo = _CertificateMemo(certificate, chain, identities, prints)
        self._certificate_memo[id(certificate)] = memo
        if len(self._certificate_memo) > self._cache_size:
            self._certificate_memo.pop(next(iter(self._certificate_memo)))
        return memo

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._epoch += 1        # and every certificate's remembered verdict with it

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    # -- the work ------------------------------------------------------------------------------

    def _verify_uncached(
        self,
        certificate: x509.Certificate,
        chain: tuple[x509.Certificate, ...],
        check_revocation: bool,
        now: datetime,
    ) -> tuple[VerifyResult, datetime]:
        """The verdict and the moment it stops being valid (before the TTL is applied)."""
        never = datetime.max.replace(tzinfo=UTC)
        if self._store is None:
            return VerifyResult(
                False, NOT_TRUSTED,
                "no trusted root CA is configured ([[ca_certificate]] with store = \"root\")",
            ), never
        untrusted = [*self._intermediates, *chain]
        path, error = self._build_path(certificate, untrusted, now)
        if path is None:
            untrusted_result = VerifyResult(
                False, NOT_TRUSTED, _not_trusted_message(certificate, error)
            )
            path = self._path_ignoring_dates(certificate, untrusted, now)
            if path is None:
                return untrusted_result, never
            # None: a path exists at another time, but the failure at `now` was not a date.
            return _date_failure(path, now) or (untrusted_result, never)
        expires = min(cert.not_valid_after_utc for cert in path) + _TICK
        checker = self.revocation
        if not check_revocation or checker is None or checker.mode == "skip":
            message = _ok_message(path, "revocation not checked")
            return VerifyResult(True, None, message, path), expires
        status = checker.check_path(path, now=now)
        if status.valid_until is not None:
            expires = min(expires, status.valid_until + _TICK)
        return _revocation_result(path, status, checker.mode), expires

    def _build_path(
        self, certificate: x509.Certificate, untrusted: list[x509.Certificate], at: datetime
    ) -> tuple[tuple[x509.Certificate, ...] | None, str]:
        """The library's path at time ``at``, or None and its error message."""
        assert self._store is not None
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(certificate, untrusted)
        except (VerificationError, ValueError) as error:
            return None, str(error)
        return tuple(verified.chain), ""

    def _path_ignoring_dates(
        self, certificate: x509.Certificate, untrusted: list[x509.Certificate], now: datetime
    ) -> tuple[x509.Certificate, ...] | None:
        """A trusted path at a moment the leaf is valid: ``now`` clamped, then its notBefore."""
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        moments = [min(max(now, not_before), not_after), not_before]
        tried = {now}
        for moment in moments:
            if moment in tried:
                continue
            tried.add(moment)
            path, _ = self._build_path(certificate, untrusted, moment)
            if path is not None:
                return path
        return None


# -- results -------------------------------------------------------------------------------


def _date_failure(
    path: tuple[x509.Certificate, ...], now: datetime
) -> tuple[VerifyResult, datetime] | None:
    """Expired / NotYetValid for the first certificate of ``path`` out of its dates at ``now``."""
    never = datetime.max.replace(tzinfo=UTC)
    for position, cert in enumerate(path):
        who = _describe(cert, position, len(path))
        if now > cert.not_valid_after_utc:
            message = f"{who} expired on {_when(cert.not_valid_after_utc)}"
            return VerifyResult(False, EXPIRED, message, path), never
        if now < cert.not_valid_before_utc:
            message = f"{who} is not valid before {_when(cert.not_valid_before_utc)}"
            return VerifyResult(False, NOT_YET_VALID, message, path), cert.not_valid_before_utc
    return None


def _revocation_result(
    path: tuple[x509.Certificate, ...], status: RevocationStatus, mode: str
) -> VerifyResult:
    if status.state is REVOKED:
        return VerifyResult(False, REVOKED_REASON, status.reason, path)
    if status.state is UNKNOWN:
        if mode == "strict":
            return VerifyResult(False, REVOCATION_UNKNOWN, status.reason, path)
        accepted = f"{status.reason}; accepted ([revocation] mode = {mode})"
        return VerifyResult(True, None, _ok_message(path, accepted), path)
    return VerifyResult(True, None, _ok_message(path, status.reason), path)


def _ok_message(path: tuple[x509.Certificate, ...], revocation: str) -> str:
    return f"chains to trusted root '{dotnet_name(path[-1].subject)}'; {revocation}"


def _not_trusted_message(certificate: x509.Certificate, error: str) -> str:
    name = f"'{dotnet_name(certificate.subject)}'"
    if _lacks_client_auth(certificate):
        return (
            f"{name} is not valid for client authentication "
            "(its extended key usage does not include clientAuth)"
        )
    detail = error.removeprefix("validation failed: ")
    # The library appends "(encountered processing <Certificate(...)>)": a Python repr.
    detail = detail.split(" (encountered processing")[0]
    detail = _LIBRARY_PHRASES.get(detail, detail)
    if certificate.issuer == certificate.subject:
        return f"{name} is self-signed and not a trusted root CA ({detail})"
    return (
        f"no chain from {name} to a trusted root CA (issuer "
        f"'{dotnet_name(certificate.issuer)}'): {detail}"
    )


# The library's words for "no issuer found", in the operator's words.
_LIBRARY_PHRASES = {
    "candidates exhausted: all candidates exhausted with no interior errors":
        "no issuer certificate found among the root and intermediate stores and the chain sent",
}


def _lacks_client_auth(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH not in usages


def _describe(cert: x509.Certificate, position: int, length: int) -> str:
    name = f"'{dotnet_name(cert.subject)}'"
    if position == 0:
        return f"the certificate {name}"
    if position == length - 1:
        return f"the root CA certificate {name}"
    return f"the intermediate CA certificate {name} in its chain"


def _fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = [
    "EXPIRED",
    "NOT_TRUSTED",
    "NOT_YET_VALID",
    "REASONS",
    "REVOCATION_UNKNOWN",
    "REVOKED_REASON",
    "CertificateVerifier",
    "VerifyResult",
]
