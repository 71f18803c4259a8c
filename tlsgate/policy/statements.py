"""Compiled policy statements: what a policy document becomes at load time.

:mod:`tlsgate.policy.document` checks the XML and builds these objects once; per request the
engine (:mod:`tlsgate.policy.engine`) only calls :meth:`Statement.start` on them with an
:class:`~tlsgate.policy.engine.Execution` (the request's state). Every value a statement can
compute at load time (header names as bytes, constant header values, status codes, identity
matchers) is computed there; expressions are compiled once.

Semantics follow API Management's policy reference; where tlsgate decides something the
reference leaves open, the class documentation says so.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Generator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from tlsgate.certs.identity import dotnet_name, thumbprint
from tlsgate.certs.revocation import REVOKED, UNKNOWN
from tlsgate.certs.verify import EXPIRED, NOT_YET_VALID
from tlsgate.http.messages import STATUS_PHRASES
from tlsgate.policy import errors as e
from tlsgate.policy.csharp import to_string
from tlsgate.policy.errors import PolicyFailure
from tlsgate.policy.model import header_bytes, header_text

if TYPE_CHECKING:  # pragma: no cover
    from tlsgate.policy.engine import Environment, Execution

log = logging.getLogger("tlsgate.policy")

#: Headers a policy may not set: the gateway frames messages and manages connections itself.
RESERVED_HEADERS = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"host",
})
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
EXISTS_ACTIONS = ("override", "skip", "append", "delete")


class Statement:
    """One policy element. ``name`` is its tag (``context.LastError.Source``), ``path`` its
    place in the section (``context.LastError.Path``), ``policy_id`` its ``id`` attribute.

    Per request the engine calls :meth:`start`. The statement runs synchronously as far as
    its inputs are at hand (the certificate from the handshake, a body already read) and
    returns None once done, or an awaitable for its rest when an expression needs an input
    fetched first (asking the client for its certificate late, receiving a body) or when it
    calls the backend. Inputs are fetched in document order, each just before the expression
    that reads it, exactly as if every statement were awaited: a ``check-header`` on a
    missing header, or a ``<when>`` that is false, fetches nothing. In the usual case nothing
    waits and a section costs no coroutine per statement.

    Most statements write their work once, as :meth:`work`: a generator that yields each
    non-constant expression it needs evaluated and is sent its value.
    """

    __slots__ = ("name", "policy_id", "path", "scope", "line", "col")

    def __init__(self, name: str, *, policy_id: str = "", path: str = "", scope: str = "",
                 line: int = 0, col: int = 0) -> None:
        self.name = name
        self.policy_id = policy_id
        self.path = path
        self.scope = scope
        self.line = line
        self.col = col

    def start(self, ex: Execution) -> Awaitable[None] | None:
        work = self.work(ex)
        try:
            expression = next(work)
            while ex.at_hand(expression):
                expression = work.send(ex.value_now(expression, self))
        except StopIteration:
            return None
        return self._finish(ex, work, expression)

    async def _finish(self, ex: Execution, work: Generator[Any, Any, None],
                      expression: Any) -> None:
        """The rest of :meth:`work` from an expression whose inputs must be fetched."""
        try:
            while True:
                expression = work.send(await ex.value(expression, self))
        except StopIteration:
            pass

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        raise NotImplementedError

    def failure(self, reason: str, message: str, status: int, *,
                public_message: str | None = None) -> PolicyFailure:
        return PolicyFailure(source=self.name, reason=reason, message=message, status=status,
                             public_message=public_message, policy_id=self.policy_id,
                             path=self.path, scope=self.scope)

    def children(self) -> Sequence[Statement]:
        """Statements nested in this one (for walks over a compiled tree)."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path or self.name}>"


# -- choose ---------------------------------------------------------------------------------


class Choose(Statement):
    """``<choose>``: the statements of the first ``<when>`` whose condition is true, else those
    of ``<otherwise>``. Conditions are compiled with the static type ``bool``."""

    __slots__ = ("branches", "otherwise")

    def __init__(self, branches: list[tuple[Any, list[Statement]]],
                 otherwise: list[Statement] | None, **common: Any) -> None:
        super().__init__("choose", **common)
        self.branches = tuple((condition, tuple(body)) for condition, body in branches)
        self.otherwise = tuple(otherwise) if otherwise is not None else None

    def start(self, ex: Execution) -> Awaitable[None] | None:
        index = 0
        for condition, body in self.branches:
            if not ex.at_hand(condition):
                return self._choose_later(ex, index)
            if ex.value_now(condition, self):
                return ex.start_all(body)
            index += 1
        if self.otherwise is not None:
            return ex.start_all(self.otherwise)
        return None

    async def _choose_later(self, ex: Execution, first: int) -> None:
        # Condition by condition: a certificate only a later <when> reads must not be asked
        # for when an earlier one is true.
        for condition, body in self.branches[first:]:
            if await ex.value(condition, self):
                await ex.run(body)
                return
        if self.otherwise is not None:
            await ex.run(self.otherwise)

    def children(self) -> Sequence[Statement]:
        out = [s for _, body in self.branches for s in body]
        return out + list(self.otherwise or ())


# -- responses ------------------------------------------------------------------------------


def status_phrase(code: int) -> str:
    return STATUS_PHRASES.get(code, "")


def clean_reason(text: str) -> str:
    """A reason phrase safe on the wire: control characters become spaces."""
    return _BAD_VALUE.sub(" ", text).replace("\t", " ")


class SetStatus(Statement):
    """``<set-status code reason>``: the status of the response (``context.Response``, or the
    response a ``return-response`` builds). ``reason`` defaults to the standard phrase."""

    __slots__ = ("code", "reason", "_reason_text")

    def __init__(self, code: Any, reason: Any | None, **common: Any) -> None:
        super().__init__("set-status", **common)
        self.code = code
        self.reason = reason
        # A constant reason phrase is cleaned once, here.
        self._reason_text = clean_reason(to_string(reason.value)) \
            if reason is not None and reason.is_constant else None

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        return self.apply(ex, ex.response_target())

    def apply(self, ex: Execution, target: Any) -> Generator[Any, Any, None]:
        code = self.code if type(self.code) is int else (yield self.code)
        if type(code) is str:
            digits = code.strip()
            code = int(digits) if digits.isascii() and digits.isdigit() else code
        if type(code) is not int or not 200 <= code <= 599:
            raise ex.expression_failure(self, f"set-status: {code!r} is not a status code "
                                              "for a response (200-599)")
        if self.reason is None:
            reason = status_phrase(code)
        elif self._reason_text is not None:
            reason = self._reason_text
        else:
            reason = clean_reason(to_string((yield self.reason)))
        target.set_status(code, reason, explicit_reason=self.reason is not None)


class SetBody(Statement):
    """``<set-body>``: text or an expression. Inbound it replaces the request body sent to the
    backend (and what later ``context.Request.Body`` reads see); elsewhere the response body."""

    __slots__ = ("value",)

    def __init__(self, value: Any, **common: Any) -> None:
        super().__init__("set-body", **common)
        self.value = value

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        target = ex.request_target() if ex.section == "inbound" else ex.response_target()
        return self.apply(ex, target)

    def apply(self, ex: Execution, target: Any) -> Generator[Any, Any, None]:
        value = self.value
        text = value.value if value.is_constant else to_string((yield value))
        target.set_body(text, ex)


class SetHeader(Statement):
    """``<set-header name exists-action>`` with ``<value>`` children. Inbound it changes the
    request headers sent to the backend; elsewhere the response headers.

    ``override`` (default) replaces every existing value by the given ones (one header line
    per ``<value>``); ``skip`` does nothing when the header exists; ``append`` adds the values
    after the existing ones; ``delete`` removes the header. Header names are matched
    case-insensitively. A value that evaluates to a string with CR, LF or another control
    character is an expression failure (header injection is impossible)."""

    __slots__ = ("header", "header_expr", "action", "values")

    def __init__(self, header: bytes | None, header_expr: Any | None, action: str,
                 values: list[Any], **common: Any) -> None:
        super().__init__("set-header", **common)
        self.header = header
        self.header_expr = header_expr
        self.action = action
        # Constant values are encoded once here.
        self.values = tuple(header_bytes(v.value) if v.is_constant else v for v in values)

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        return self.apply(ex, ex.request_target() if ex.section == "inbound"
                          else ex.response_target())

    def apply(self, ex: Execution, target: Any) -> Generator[Any, Any, None]:
        name = self.header
        if name is None:
            text = to_string((yield self.header_expr)).strip()
            if not HEADER_NAME.match(text) or text.lower().encode() in RESERVED_HEADERS:
                raise ex.expression_failure(self, f"set-header: {text!r} is not a header name "
                                                  "a policy may set")
            name = text.lower().encode()
        action = self.action
        if action == "delete":
            target.headers = [(n, v) for n, v in target.headers if n != name]
            return
        if action == "skip" and any(n == name for n, _ in target.headers):
            return
        values = []
        for value in self.values:
            if type(value) is not bytes:
                text = to_string((yield value))
                if _BAD_VALUE.search(text):
                    raise ex.expression_failure(
                        self, f"set-header {name.decode()}: the value contains a control "
                              "character (CR, LF, NUL...)")
                value = header_bytes(text.strip(" \t"))
            values.append((name, value))
        headers = target.headers      # now: fetching a value's input may have changed them
        if action == "override":
            headers = [(n, v) for n, v in headers if n != name]
        target.headers = [*headers, *values]


class ReturnResponse(Statement):
    """``<return-response>``: stop the pipeline and answer with the response its children
    (``set-status``, ``set-header``, ``set-body``, in document order) build, starting from
    ``200 OK``, no headers, empty body. The outbound section does not run (as in APIM)."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[Statement], **common: Any) -> None:
        super().__init__("return-response", **common)
        self.steps = tuple(steps)

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        target = ex.new_response()
        for step in self.steps:
            yield from step.apply(ex, target)  # type: ignore[attr-defined]
        ex.finish(target)

    def children(self) -> Sequence[Statement]:
        return self.steps


class SetVariable(Statement):
    """``<set-variable name value>``: ``context.Variables[name]`` = the value (typed as the
    expression computes it; literal text is a string)."""

    __slots__ = ("variable", "value")

    def __init__(self, variable: str, value: Any, **common: Any) -> None:
        super().__init__("set-variable", **common)
        self.variable = variable
        self.value = value

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        value = self.value
        ex.ctx.variables[self.variable] = value.value if value.is_constant else (yield value)


class ForwardRequest(Statement):
    """``<forward-request timeout>``: send the request to the API's backend; its response
    becomes ``context.Response``. ``timeout`` (seconds) replaces the API's ``timeout`` for
    this call; a constant timeout gets its own backend client built at load time."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float | Any | None = None, **common: Any) -> None:
        super().__init__("forward-request", **common)
        self.timeout = timeout

    def start(self, ex: Execution) -> Awaitable[None]:
        timeout = self.timeout
        if timeout is None or isinstance(timeout, (int, float)):
            return ex.forward(timeout, dynamic=False)
        return self._forward_computed(ex, timeout)

    async def _forward_computed(self, ex: Execution, timeout: Any) -> None:
        value = await ex.value(timeout, self)
        if type(value) is str and value.strip().isascii() and value.strip().isdigit():
            value = int(value)
        if type(value) not in (int, float) or value <= 0:
            raise ex.expression_failure(self, f"forward-request: timeout {value!r} is not a "
                                              "positive number of seconds")
        await ex.forward(float(value), dynamic=True)


class CheckHeader(Statement):
    """``<check-header name failed-check-httpcode failed-check-error-message ignore-case>``
    with optional ``<value>`` children.

    Without values, the header must be present. With values, *every* occurrence of the header
    must equal one of them (compared case-insensitively with ``ignore-case="true"``): a second
    header line with another value cannot slip through. Failures: ``HeaderNotFound`` or
    ``HeaderValueNotAllowed``, answered by default with ``failed-check-httpcode`` and the JSON
    error body carrying ``failed-check-error-message``."""

    __slots__ = ("header", "status", "error_message", "ignore_case", "values")

    def __init__(self, header: bytes, status: int, error_message: str, ignore_case: bool,
                 values: list[Any], **common: Any) -> None:
        super().__init__("check-header", **common)
        self.header = header
        self.status = status
        self.error_message = error_message
        self.ignore_case = ignore_case
        self.values = tuple(values)

    def work(self, ex: Execution) -> Generator[Any, Any, None]:
        name = self.header
        present = [header_text(v) for n, v in ex.request.headers if n == name]
        label = name.decode()
        if not present:
            raise self.failure(e.HEADER_NOT_FOUND, f"Header {label} was not found in the "
                               f"request. {self.error_message}", self.status,
                               public_message=self.error_message)
        if not self.values:
            return
        allowed = []
        for value in self.values:
            allowed.append(value.value if value.is_constant else to_string((yield value)))
        if self.ignore_case:
            allowed = [a.casefold() for a in allowed]
            present = [p.casefold() for p in present]
        for got in present:
            if got not in allowed:
                raise self.failure(e.HEADER_VALUE_NOT_ALLOWED,
                                   f"Header {label} value is not allowed. {self.error_message}",
                                   self.status, public_message=self.error_message)


# -- validate-client-certificate ------------------------------------------------------------


_MESSAGES = {
    e.CERTIFICATE_MISSING: "Client certificate is missing.",
    e.CERTIFICATE_NOT_TRUSTED: "Client certificate is not trusted",
    e.CERTIFICATE_EXPIRED: "Client certificate has expired",
    e.CERTIFICATE_NOT_YET_VALID: "Client certificate is not valid yet",
    e.CERTIFICATE_REVOKED: "Client certificate is revoked",
    e.CERTIFICATE_REVOCATION_UNKNOWN: "Client certificate revocation status is unknown",
    e.CERTIFICATE_IDENTITY_MISMATCH: "Client certificate does not match any allowed identity",
}


def certificate_message(reason: str, detail: str = "") -> str:
    base = _MESSAGES[reason]
    return f"{base}: {detail}" if detail else (base if base.endswith(".") else base + ".")


class Identity:
    """One ``<identity>``: every attribute given must match (AND).

    Comparison rules: thumbprints ignore case, spaces and colons; serial numbers compare as
    numbers (hex, leading zeros, spaces and colons ignored); distinguished names
    (``subject``, ``issuer-subject``) compare attribute by attribute in order, keys and values
    case-insensitively, whitespace around separators ignored; ``common-name`` matches any CN of
    the subject and ``dns-name`` any dNSName of the subjectAltName, both case-insensitively.
    ``issuer-thumbprint`` and ``issuer-certificate-id`` need the issuer's certificate: the next
    certificate of the verified path, else the one (in the chain the client sent or the CA
    store) whose name is the issuer's and whose key verifies the signature.
    ``issuer-certificate-id`` names a ``[[certificate]]`` of the configuration."""

    __slots__ = ("thumbprint", "serial_number", "common_name", "subject", "dns_name",
                 "issuer_subject", "issuer_thumbprint", "issuer_certificate_id", "attributes")

    def __init__(self, *, thumbprint: str | None = None, serial_number: int | None = None,
                 common_name: str | None = None, subject: tuple | None = None,
                 dns_name: str | None = None, issuer_subject: tuple | None = None,
                 issuer_thumbprint: str | None = None,
                 issuer_certificate_id: str | None = None,
                 attributes: dict[str, str] | None = None) -> None:
        self.thumbprint = thumbprint
        self.serial_number = serial_number
        self.common_name = common_name
        self.subject = subject
        self.dns_name = dns_name
        self.issuer_subject = issuer_subject
        self.issuer_thumbprint = issuer_thumbprint
        self.issuer_certificate_id = issuer_certificate_id
        self.attributes = attributes or {}

    def matches(self, view: Any, issuer: _IssuerLookup, env: Environment) -> bool:
        cert: x509.Certificate = view.certificate
        if self.thumbprint is not None and view.thumbprint != self.thumbprint:
            return False
        if self.serial_number is not None and cert.serial_number != self.serial_number:
            return False
        if self.common_name is not None:
            names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not any(isinstance(n, str) and n.casefold() == self.common_name for n in names):
                return False
        if self.subject is not None and canonical_dn(view.subject_name.name) != self.subject:
            return False
        if self.dns_name is not None and self.dns_name not in _dns_names(cert):
            return False
        if self.issuer_subject is not None and \
                canonical_dn(view.issuer_name.name) != self.issuer_subject:
            return False
        if self.issuer_thumbprint is not None:
            found = issuer.get()
            if found is None or thumbprint(found) != self.issuer_thumbprint:
                return False
        if self.issuer_certificate_id is not None:
            expected = env.certificate(self.issuer_certificate_id)
            if expected is None or not signed_by(cert, expected):
                return False
        return True

    def __repr__(self) -> str:
        return f"<identity {self.attributes}>"


def normalize_thumbprint(text: str) -> str:
    return re.sub(r"[\s:]", "", text).upper()


def parse_serial(text: str) -> int | None:
    cleaned = re.sub(r"[\s:]", "", text)
    if not cleaned or not re.fullmatch(r"[0-9A-Fa-f]+", cleaned):
        return None
    return int(cleaned, 16)


@functools.lru_cache(maxsize=4096)
def canonical_dn(text: str) -> tuple[tuple[str, str], ...] | None:
    """``CN=a, O=b`` as ((key, value), ...) with keys upper-cased and values case-folded;
    quoted values (``O="a, b"``) are unquoted. None when the text is not a DN.

    Remembered (a pure function of the text, answers immutable): ``subject`` and
    ``issuer-subject`` identities compare a client's names on every request, and reading
    a DN character by character was three quarters of validate-client-certificate's cost."""
    parts: list[tuple[str, str]] = []
    current: list[str] = []
    quoted = False
    index = 0
    pieces: list[str] = []
    while index < len(text):
        char = text[index]
        if char == '"':
            if quoted and text[index + 1:index + 2] == '"':
                current.append('"')
                index += 2
                continue
            quoted = not quoted
        elif char == "\\" and index + 1 < len(text):
            current.append(text[index + 1])
            index += 2
            continue
        elif char in ",;+" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if quoted:
        return None
    pieces.append("".join(current))
    for piece in pieces:
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            return None
        parts.append((key.strip().upper(), value.strip().casefold()))
    return tuple(parts)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name.casefold() for name in san.get_values_for_type(x509.DNSName)]


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer``'s name is ``cert``'s issuer and its key verifies ``cert``'s signature."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # wrong key, unsupported algorithm, malformed: not the issuer
        return False
    return True


class _IssuerLookup:
    """The issuer certificate of a client certificate, looked up once, when first needed."""

    __slots__ = ("cert", "candidates", "path", "_found", "_done")

    def __init__(self, cert: x509.Certificate, path: Sequence[x509.Certificate],
                 candidates: Sequence[x509.Certificate]) -> None:
        self.cert = cert
        self.path = path
        self.candidates = candidates
        self._found: x509.Certificate | None = None
        self._done = False

    def get(self) -> x509.Certificate | None:
        if not self._done:
            self._done = True
            if len(self.path) > 1:
                self._found = self.path[1]
            elif len(self.path) == 1:           # a self-signed certificate trusted as a root
                self._found = self.path[0]
            else:
                self._found = next((c for c in self.candidates if signed_by(self.cert, c)),
                                   None)
        return self._found


class ValidateClientCertificate(Statement):
    """``<validate-client-certificate>``: the client certificate, checked in this order (the
    first failing check decides the reason):

    1. present, else ``ClientCertificateMissing`` (whatever the switches say);
    2. ``validate-trust``: a path to a root of the CA store, whatever the dates
       (``ClientCertificateNotTrusted``);
    3. ``validate-not-after`` / ``validate-not-before``: the validity dates of the certificate
       and, when a trusted path was found, of every certificate of the path, leaf first
       (``ClientCertificateExpired`` / ``ClientCertificateNotYetValid``). With a switch off,
       that date is ignored for the whole path;
    4. ``validate-revocation``: the path against the loaded CRLs under ``[revocation] mode``
       (``ClientCertificateRevoked``, and ``ClientCertificateRevocationUnknown`` in ``strict``
       mode). An untrusted certificate (``validate-trust="false"``) is checked against the CRL
       of its issuer when the issuer certificate is known (chain sent, CA store); a self-signed
       one, like any trust anchor, has nothing to check; an unknown issuer means "unknown";
    5. ``<identities>``: at least one identity must match (``ClientCertificateIdentityMismatch``).

    Trust comes before dates, as in ``Verify()``: an expired certificate from an unknown CA is
    "not trusted". With every switch on (the default) one cached call of the verifier decides
    steps 2-4.

    ``ignore-error="true"``: a failure does not stop the pipeline and does not run
    ``on-error``; ``context.LastError`` stays unset. The reason is recorded in the access log
    as ``"<Reason> (ignored)"`` and logged at INFO on ``tlsgate.policy``.
    """

    __slots__ = ("validate_revocation", "validate_trust", "validate_not_before",
                 "validate_not_after", "ignore_error", "identities")

    def __init__(self, *, validate_revocation: bool = True, validate_trust: bool = True,
                 validate_not_before: bool = True, validate_not_after: bool = True,
                 ignore_error: bool = False, identities: Sequence[Identity] = (),
                 **common: Any) -> None:
        super().__init__("validate-client-certificate", **common)
        self.validate_revocation = validate_revocation
        self.validate_trust = validate_trust
        self.validate_not_before = validate_not_before
        self.validate_not_after = validate_not_after
        self.ignore_error = ignore_error
        self.identities = tuple(identities)

    def start(self, ex: Execution) -> Awaitable[None] | None:
        if ex.ctx.load_certificate_now():
            self._decide(ex)
            return None
        return self._fetch_then_decide(ex)

    async def _fetch_then_decide(self, ex: Execution) -> None:
        await ex.ctx.load_certificate()
        self._decide(ex)

    def _decide(self, ex: Execution) -> None:
        ignored = self.verdict(ex.ctx.certificate, ex.env)
        if ignored is not None:
            ex.ignored(ignored)

    def verdict(self, view: Any, env: Environment) -> str | None:
        """Judge the certificate (its view, fetched): None when it passes; the reason of a
        failure ``ignore-error`` lets through; else the failure is raised."""
        outcome = self.check(view, env)
        if outcome is None:
            return None
        reason, message = outcome
        if self.ignore_error:
            log.info("validate-client-certificate failed (ignore-error=\"true\"): %s: %s",
                     reason, message)
            return reason
        raise self.failure(reason, message, 403)

    def check(self, view: Any, env: Environment,
              now: datetime | None = None) -> tuple[str, str] | None:
        """(reason, message) of the first failing check, or None."""
        if view is None:
            return e.CERTIFICATE_MISSING, certificate_message(e.CERTIFICATE_MISSING)
        cert: x509.Certificate = view.certificate
        chain = view.chain
        verifier = env.verifier
        path: Sequence[x509.Certificate] = ()
        everything = self.validate_trust and self.validate_not_before and \
            self.validate_not_after and self.validate_revocation
        if verifier is not None and everything:
            result = verifier.verify(cert, chain, check_revocation=True)
            if not result.ok:
                return result.reason, certificate_message(result.reason, result.message)
            path = result.path
        else:
            now = now or datetime.now(UTC)
            if verifier is not None and (self.validate_trust or self.validate_not_before or
                                         self.validate_not_after or self.validate_revocation):
                result = verifier.verify(cert, chain, check_revocation=False)
                if result.ok or result.reason in (EXPIRED, NOT_YET_VALID):
                    path = result.path
                elif self.validate_trust:
                    return e.CERTIFICATE_NOT_TRUSTED, certificate_message(
                        e.CERTIFICATE_NOT_TRUSTED, result.message)
            elif self.validate_trust:
                return e.CERTIFICATE_NOT_TRUSTED, certificate_message(
                    e.CERTIFICATE_NOT_TRUSTED, "no certificate verifier is configured")
            dates = self._check_dates(path or (cert,), now)
            if dates is not None:
                return dates
            if self.validate_revocation:
                revocation = self._check_revocation(cert, chain, path, env, now)
                if revocation is not None:
                    return revocation
        if self.identities:
            issuer = _IssuerLookup(cert, path, (*chain, *env.ca_certificates))
            if not any(identity.matches(view, issuer, env) for identity in self.identities):
                count = len(self.identities)
                return e.CERTIFICATE_IDENTITY_MISMATCH, certificate_message(
                    e.CERTIFICATE_IDENTITY_MISMATCH,
                    f"'{view.subject_name.name}' (thumbprint {view.thumbprint}) matches none "
                    f"of the {count} identit{'ies' if count != 1 else 'y'}")
        return None

    def _check_dates(self, path: Sequence[x509.Certificate],
                     now: datetime) -> tuple[str, str] | None:
        for position, cert in enumerate(path):
            who = _describe(cert, position, len(path))
            if self.validate_not_after and now > cert.not_valid_after_utc:
                return e.CERTIFICATE_EXPIRED, certificate_message(
                    e.CERTIFICATE_EXPIRED, f"{who} expired on {_when(cert.not_valid_after_utc)}")
            if self.validate_not_before and now < cert.not_valid_before_utc:
                return e.CERTIFICATE_NOT_YET_VALID, certificate_message(
                    e.CERTIFICATE_NOT_YET_VALID,
                    f"{who} is not valid before {_when(cert.not_valid_before_utc)}")
        return None

    def _check_revocation(self, cert: x509.Certificate, chain: Sequence[x509.Certificate],
                          path: Sequence[x509.Certificate], env: Environment,
                          now: datetime) -> tuple[str, str] | None:
        checker = env.verifier.revocation if env.verifier is not None else None
        if checker is None or checker.mode == "skip":
            return None
        if path:
            status = checker.check_path(path, now=now)
            state, message = status.state, status.reason
        elif signed_by(cert, cert):
            return None             # self-signed: a trust anchor has no CRL to be checked in
        else:
            issuer = next((c for c in (*chain, *env.ca_certificates) if signed_by(cert, c)),
                          None)
            if issuer is None:
                state, message = UNKNOWN, (
                    f"the issuer certificate of '{dotnet_name(cert.subject)}' "
                    f"('{dotnet_name(cert.issuer)}') is not known, so no CRL can be checked")
            else:
                status = checker.check(cert, issuer, now=now)
                state, message = status.state, status.reason
        if state is REVOKED:
            return e.CERTIFICATE_REVOKED, certificate_message(e.CERTIFICATE_REVOKED, message)
        if state is UNKNOWN and checker.mode == "strict":
            return e.CERTIFICATE_REVOCATION_UNKNOWN, certificate_message(
                e.CERTIFICATE_REVOCATION_UNKNOWN, message)
        return None


def _describe(cert: x509.Certificate, position: int, length: int) -> str:
    name = f"'{dotnet_name(cert.subject)}'"
    if position == 0:
        return f"the certificate {name}"
    if position == length - 1:
        return f"the root CA certificate {name}"
    return f"the intermediate CA certificate {name} in its chain"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Marker for <base /> while a document is composed (never executed).
class Base(Statement):
    __slots__ = ()

    def __init__(self, **common: Any) -> None:
        super().__init__("base", **common)

    def start(self, ex: Execution) -> None:  # pragma: no cover - replaced when composed
        raise AssertionError("<base /> must be replaced when policies are composed")


__all__ = [
    "Base", "CheckHeader", "Choose", "ForwardRequest", "Identity", "ReturnResponse",
    "SetBody", "SetHeader", "SetStatus", "SetVariable", "Statement", "ValidateClientCertificate",
    "canonical_dn", "normalize_thumbprint", "parse_serial",
]
