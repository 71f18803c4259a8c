"""The API Management object model that policy expressions see as ``context``.

:func:`build_context` makes the ``context`` of one request from a tlsgate
:class:`~tlsgate.http.messages.Request`; :class:`Deployment` is built once per loaded
configuration (its certificate views are shared by all requests).

Types and members follow APIM's documented model (``IProxyRequestContext``, ``IRequest``,
``IUrl``, ``IMessageBody``, ``IResponse``, ``IDeployment``, ``X509Certificate2``...):

* ``context.Request.Headers`` and ``context.Request.Url.Query`` are, as in APIM,
  ``IReadOnlyDictionary<string, string[]>`` with case-insensitive names, and
  ``GetValueOrDefault(name, default)`` returns the values joined by ``","``.
* ``context.Variables`` is ``IReadOnlyDictionary<string, object>`` over the engine's own dict
  (set-variable writes there), with APIM's ``GetValueOrDefault<T>(name[, default])``.
* ``context.RequestId`` is a ``Guid`` whose text is tlsgate's request id.

Inputs that may need waiting for are fetched *before* evaluation, never during it: reading
the client certificate can mean a TLS renegotiation, and reading the body means receiving it.
Compiled expressions say what they read (``reads_certificate``, ``reads_body``). The engine
fetches that just before evaluating (:meth:`PolicyContext.load_certificate_now` when the
handshake already has the answer, else :meth:`PolicyContext.load_certificate`;
:meth:`PolicyContext.provide_body`); a context used on its own is prepared with
``await context.prepare(expression)`` (which reads the body through ``body_loader``). Either
way evaluation itself never waits.

``Verify()`` and ``VerifyNoRevocation()`` call the injected verifier:
``verifier.verify(certificate, chain, check_revocation=True|False)``, which returns a bool or
an object with a bool ``ok`` (``tlsgate.certs.verify.CertificateVerifier`` returns a
``VerifyResult``); anything else is an error, never "true".
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter, methodcaller
from typing import Protocol
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from tlsgate.certs.identity import dotnet_name, serial_number_hex, thumbprint
from tlsgate.http.messages import Request
from tlsgate.policy.csharp import runtime as rt
from tlsgate.policy.csharp import types as t
from tlsgate.policy.csharp import values as v
from tlsgate.policy.csharp.errors import ExpressionRuntimeError, invalid_cast
from tlsgate.policy.csharp.formatting import format_datetime
from tlsgate.policy.csharp.types import (
    BOOL,
    INT,
    OBJECT,
    STRING,
    MemberUseError,
    Param,
    Site,
    TypeDef,
    TypeRef,
)


class CertificateVerifier(Protocol):
    """What ``Verify()`` calls: ``verify(certificate, chain, check_revocation=...)`` giving a
    bool or an object with a bool ``ok`` (as ``tlsgate.certs.verify.CertificateVerifier``
    does)."""

    def verify(self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...], *,
               check_revocation: bool) -> object: ...


# -- certificates ---------------------------------------------------------------------------

_UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_SIGNATURE_NAMES = {
    "1.2.840.10045.4.3.2": "sha256ECDSA", "1.2.840.10045.4.3.3": "sha384ECDSA",
    "1.2.840.10045.4.3.4": "sha512ECDSA", "1.2.840.113549.1.1.5": "sha1RSA",
    "1.2.840.113549.1.1.11": "sha256RSA", "1.2.840.113549.1.1.12": "sha384RSA",
    "1.2.840.113549.1.1.13": "sha512RSA", "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.3.101.112": "Ed25519",
}


class DistinguishedName:
    """``X500DistinguishedName``: ``Name`` in .NET order."""

    __slots__ = ("name", "der")

    def __init__(self, name: x509.Name) -> None:
        self.name = dotnet_name(name)
        self.der = name.public_bytes()

    def cs_to_string(self) -> str:
        return "System.Security.Cryptography.X509Certificates.X500DistinguishedName"


class Oid:
    __slots__ = ("value", "friendly_name")

    def __init__(self, value: str, friendly_name: str) -> None:
        self.value = value
        self.friendly_name = friendly_name

    def cs_to_string(self) -> str:
        return "System.Security.Cryptography.Oid"


class CertificateView:
    """``X509Certificate2`` over a ``cryptography`` certificate.

    Names and hashes are computed on first use and kept: a view lives as long as its request
    (client certificates) or its configuration (``context.Deployment.Certificates``).
    """

    __slots__ = ("certificate", "chain", "has_private_key", "_verifier", "_thumbprint",
                 "_subject", "_issuer", "_serial")

    def __init__(self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...] = (),
                 verifier: CertificateVerifier | None = None, *,
                 has_private_key: bool = False) -> None:
        self.certificate = certificate
        self.chain = tuple(chain)
        self.has_private_key = has_private_key
        self._verifier = verifier
        self._thumbprint: str | None = None
        self._subject: DistinguishedName | None = None
        self._issuer: DistinguishedName | None = None
        self._serial: str | None = None

    @property
    def thumbprint(self) -> str:
        if self._thumbprint is None:
            self._thumbprint = thumbprint(self.certificate)
        return self._thumbprint

    @property
    def subject_name(self) -> DistinguishedName:
        if self._subject is None:
            self._subject = DistinguishedName(self.certificate.subject)
        return self._subject

    @property
    def issuer_name(self) -> DistinguishedName:
        if self._issuer is None:
            self._issuer = DistinguishedName(self.certificate.issuer)
        return self._issuer

    @property
    def serial_number(self) -> str:
        if self._serial is None:
            self._serial = serial_number_hex(self.certificate)
        return self._serial

    @property
    def not_before(self) -> v.DateTime:
        return v.DateTime(self.certificate.not_valid_before_utc.replace(tzinfo=None), v.LOCAL)

    @property
    def not_after(self) -> v.DateTime:
        return v.DateTime(self.certificate.not_valid_after_utc.replace(tzinfo=None), v.LOCAL)

    def verify(self, check_revocation: bool) -> bool:
        if self._verifier is None:
            raise ExpressionRuntimeError("no certificate verifier is configured",
                                         "CryptographicException")
        try:
            result = self._verifier.verify(self.certificate, self.chain,
                                           check_revocation=check_revocation)
        except ExpressionRuntimeError:
            raise
        except Exception as exc:  # a verifier failure is the expression's failure
            raise ExpressionRuntimeError(str(exc) or type(exc).__name__,
                                         "CryptographicException") from exc
        # A bool, or a result object with a bool ``ok`` (tlsgate.certs.verify.VerifyResult).
        # Anything else fails closed: an object must never pass for "true".
        ok = result if isinstance(result, bool) else getattr(result, "ok", None)
        if not isinstance(ok, bool):
            raise ExpressionRuntimeError(f"the certificate verifier returned {result!r}, "
                                         "not a bool", "CryptographicException")
        return ok

    def name_info(self, name_type: v.EnumValue, for_issuer: bool) -> str:
        """``GetNameInfo`` with the rules of Windows' CertGetNameString, which .NET follows:

        * SimpleName: CN, else OU, O, E (first in .NET order), else the first e-mail then
          DNS name of the alternative names.
        * EmailName: the first rfc822Name of the alternative names, else the E attribute.
        * UpnName: the first UPN (otherName 1.3.6.1.4.1.311.20.2.3) of the alternative names.
        * DnsName: the first dNSName of the alternative names, else the CN.
        * DnsFromAlternativeName: the first dNSName only.
        * UrlName: the first URI of the alternative names.

        ``for_issuer`` reads the issuer name and the issuer alternative names. Nothing found
        gives "".
        """
        if name_type is None:
            raise ExpressionRuntimeError("Value cannot be null. (Parameter 'nameType')",
                                         "ArgumentNullException")
        cert = self.certificate
        name = cert.issuer if for_issuer else cert.subject
        alt = _alternative_names(cert, for_issuer)
        kind = name_type.name
        if kind == "SimpleName":
            for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                        NameOID.ORGANIZATION_NAME, NameOID.EMAIL_ADDRESS):
                value = _first_attribute(name, oid)
                if value is not None:
                    return value
            return _first_alt(alt, x509.RFC822Name) or _first_alt(alt, x509.DNSName) or ""
        if kind == "EmailName":
            return _first_alt(alt, x509.RFC822Name) or \
                _first_attribute(name, NameOID.EMAIL_ADDRESS) or ""
        if kind == "UpnName":
            for general in alt:
                if isinstance(general, x509.OtherName) and general.type_id == _UPN_OID:
                    text = _der_utf8(general.value)
                    if text is not None:
                        return text
            return ""
        if kind == "DnsName":
            return _first_alt(alt, x509.DNSName) or \
                _first_attribute(name, NameOID.COMMON_NAME) or ""
        if kind == "DnsFromAlternativeName":
            return _first_alt(alt, x509.DNSName) or ""
        if kind == "UrlName":
            return _first_alt(alt, x509.UniformResourceIdentifier) or ""
        raise ExpressionRuntimeError("Value of X509NameType is not valid.", "ArgumentException")

    def cs_to_string(self) -> str:
        """``X509Certificate.ToString()``: the short summary .NET prints."""
        crlf = "\r\n"
        sections = (("Subject", self.subject_name.name), ("Issuer", self.issuer_name.name),
                    ("Serial Number", self.serial_number),
                    ("Not Before", format_datetime(self.not_before, "G")),
                    ("Not After", format_datetime(self.not_after, "G")),
                    ("Thumbprint", self.thumbprint))
        return "".join(f"[{title}]{crlf}  {value}{crlf}{crlf}" for title, value in sections)

    @staticmethod
    def cs_equals(a: CertificateView, b: object) -> bool:
        """``X509Certificate.Equals``: same issuer and serial number."""
        return isinstance(b, CertificateView) and \
            a.certificate.issuer == b.certificate.issuer and \
            a.certificate.serial_number == b.certificate.serial_number

    def __repr__(self) -> str:
        return f"<X509Certificate2 {self.subject_name.name} {self.thumbprint}>"


def _alternative_names(cert: x509.Certificate, issuer: bool) -> list:
    oid = ExtensionOID.ISSUER_ALTERNATIVE_NAME if issuer else ExtensionOID.SUBJECT_ALTERNATIVE_NAME
    try:
        return list(cert.extensions.get_extension_for_oid(oid).value)  # type: ignore[arg-type]
    except (x509.ExtensionNotFound, ValueError):
        return []


def _first_alt(names: list, kind: type) -> str | None:
    for general in names:
        if isinstance(general, kind):
            return general.value
    return None


def _first_attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    for rdn in reversed(name.rdns):  # .NET order: most specific first
        for attribute in rdn:
            if attribute.oid == oid:
                value = attribute.value
                return value if isinstance(value, str) else value.hex()
    return None


def _der_utf8(data: bytes) -> str | None:
    """The text of a DER UTF8String (possibly inside an explicit [0] tag)."""
    try:
        if data[:1] == b"\xa0":
            data = data[2:] if data[1] < 0x80 else data[2 + (data[1] & 0x7F):]
        if data[:1] != b"\x0c":
            return None
        length = data[1]
        offset = 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[2:2 + count], "big")
            offset = 2 + count
        return data[offset:offset + length].decode("utf-8")
    except (IndexError, UnicodeDecodeError):
        return None


# -- the context ------------------------------------------------------------------------------


@dataclass
class LastError:
    """``context.LastError``, set by the engine while ``on-error`` runs."""

    source: str = ""
    reason: str = ""
    message: str = ""
    scope: str = ""
    section: str = ""
    path: str = ""
    policy_id: str = ""


@dataclass
class ApiInfo:
    name: str = ""
    path: str = ""
    id: str = ""
    version: str = ""
    revision: str = "1"
    service_url: str | None = None


@dataclass
class OperationInfo:
    method: str = ""
    url_template: str = "/*"
    name: str = ""
    id: str = ""


@dataclass
class ResponseState:
    """``context.Response`` as the engine last set it (headers as on the wire: bytes)."""

    status_code: int = 200
    status_reason: str = "OK"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body_text: str | None = None


class Deployment:
    """``context.Deployment``: built once per configuration, shared by every request."""

    __slots__ = ("service_name", "region", "gateway_id", "certificates", "_client_views")

    #: Client certificate views remembered across connections (a returning client's names
    #: and hashes are not computed again on each new connection).
    CLIENT_VIEWS = 4096

    def __init__(self, certificates: Mapping[str, object] | None = None, *,
                 verifier: CertificateVerifier | None = None, service_name: str = "tlsgate",
                 region: str = "local", gateway_id: str = "managed") -> None:
        """``certificates`` maps ids to ``LoadedCertificate`` (from the config loader),
        ``x509.Certificate`` or ready :class:`CertificateView` objects."""
        self.service_name = service_name
        self.region = region
        self.gateway_id = gateway_id
        views: dict[str, CertificateView] = {}
        for cert_id, entry in (certificates or {}).items():
            views[cert_id] = _view_of(entry, verifier)
        self.certificates = v.CsDictionary(views)
        self._client_views: OrderedDict[tuple, CertificateView] = OrderedDict()

    def client_view(self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...],
                    verifier: CertificateVerifier | None) -> CertificateView:
        """The view of a client certificate, shared by every connection that presents it.

        Keyed by object identity: the TLS layer interns certificates (one object per DER,
        tlsgate.tls.session.intern_certificate), so a returning client brings the same
        objects, and ids cost nothing to hash where hashing certificates costs ~3 µs each.
        The view holds its certificate and chain, so their ids cannot be reused while the
        entry exists; an equal certificate in a new object just gets a view of its own."""
        key = (id(certificate), *map(id, chain), id(verifier))
        view = self._client_views.get(key)
        # (the tuple comparison finds the same objects identical without comparing them)
        if view is not None and view.certificate is certificate and view._verifier is \
                verifier and view.chain == chain:
            self._client_views.move_to_end(key)
            return view
        view = CertificateView(certificate, chain, verifier)
        self._client_views[key] = view
        if len(self._client_views) > self.CLIENT_VIEWS:
            self._client_views.popitem(last=False)
        return view


def _view_of(entry: object, verifier: CertificateVerifier | None) -> CertificateView:
    if isinstance(entry, CertificateView):
        return entry
    if isinstance(entry, x509.Certificate):
        return CertificateView(entry, (), verifier)
    certificate = getattr(entry, "certificate", None)   # LoadedCertificate
    if isinstance(certificate, x509.Certificate):
        return CertificateView(certificate, tuple(getattr(entry, "chain", ()) or ()), verifier,
                               has_private_key=getattr(entry, "private_key", None) is not None)
    raise TypeError(f"not a certificate: {entry!r}")


_NOT_FETCHED = object()


class PolicyContext:
    """``context`` for one request. Build it with :func:`build_context`."""

    __slots__ = ("request", "deployment", "api", "operation", "_variables", "_response",
                 "last_error", "_request_id", "_timestamp", "_wall_clock", "tracing", "verifier",
                 "body_consumed", "_certificate", "_body_text", "_started", "_original",
                 "_variables_view", "_request_view", "_response_view", "body_loader")

    def __init__(self, request: Request, deployment: Deployment,
                 api: ApiInfo | None = None, verifier: CertificateVerifier | None = None, *,
                 operation: OperationInfo | None = None,
                 variables: dict[str, object] | None = None,
                 response: ResponseState | None = None,
                 body_loader: Callable[[], Awaitable[str]] | None = None) -> None:
        self.request = request
        self.deployment = deployment
        self.api = api or ApiInfo()
        self.operation = operation             # built when first read when None
        # context.Variables and context.Response: made when first used (most requests of
        # the usual policies never do).
        self._variables = variables
        self._response = response
        self.last_error: LastError | None = None
        self._request_id: v.Guid | None = None      # built when first read
        self._timestamp: v.DateTime | None = None
        self._wall_clock = time.time()          # (not derived later: the clock may step)
        self.tracing = False
        self.verifier = verifier
        self.body_consumed = False
        self.body_loader = body_loader
        self._certificate: object = _NOT_FETCHED
        self._body_text: str | None = None
        self._started = time.monotonic()
        self._original = (request.scheme, request.authority, request.path, request.query)
        # Built when first read. The Request and Response views point back at the context:
        # the engine calls release() when the request is done, so that the context is freed
        # by reference counting, not left to the cyclic garbage collector (measured: ~4 µs
        # per request in collections alone).
        self._variables_view: v.CsDictionary | None = None
        self._request_view: RequestView | None = None
        self._response_view: ResponseView | None = None

    @property
    def variables(self) -> dict[str, object]:
        variables = self._variables
        if variables is None:
            variables = self._variables = {}
        return variables

    @property
    def response(self) -> ResponseState:
        """The response ``context.Response`` reads (the engine's current target's state)."""
        response = self._response
        if response is None:
            response = self._response = ResponseState()
        return response

    @response.setter
    def response(self, state: ResponseState) -> None:
        self._response = state

    @property
    def request_view(self) -> RequestView:
        """``context.Request`` (one object per request, as in APIM)."""
        view = self._request_view
        if view is None:
            view = self._request_view = RequestView(self)
        return view

    @property
    def response_view(self) -> ResponseView:
        view = self._response_view
        if view is None:
            view = self._response_view = ResponseView(self)
        return view

    def release(self) -> None:
        """Drop the views that point back at this context (the request is done)."""
        self._request_view = self._response_view = None

    @property
    def variables_view(self) -> v.CsDictionary:
        if self._variables_view is None:
            self._variables_view = v.CsDictionary(self.variables)
        return self._variables_view

    @property
    def operation_info(self) -> OperationInfo:
        if self.operation is None:
            self.operation = OperationInfo(method=self.request.method)
        return self.operation

    @property
    def request_id(self) -> v.Guid:
        """``context.RequestId``: the gateway's request id."""
        if self._request_id is None:
            self._request_id = v.Guid(self.request.request_id or str(uuid.uuid4()))
        return self._request_id

    @property
    def timestamp(self) -> v.DateTime:
        """``context.Timestamp``: when the request reached the policies (UTC)."""
        if self._timestamp is None:
            moment = datetime.fromtimestamp(self._wall_clock, UTC).replace(tzinfo=None)
            self._timestamp = v.DateTime(moment, v.UTC)
        return self._timestamp

    # -- inputs fetched before evaluation ----------------------------------------------

    @property
    def certificate_loaded(self) -> bool:
        return self._certificate is not _NOT_FETCHED

    def provide_certificate(self, certificate: x509.Certificate | None,
                            chain: tuple[x509.Certificate, ...] = ()) -> None:
        """Make ``context.Request.Certificate`` this certificate (None: no certificate)."""
        self._certificate = None if certificate is None else \
            CertificateView(certificate, tuple(chain), self.verifier)

    async def load_certificate(self) -> None:
        """Fetch the client certificate through ``request.client_certificate()`` (which may
        renegotiate), once."""
        if self.certificate_loaded:
            return
        self._use_certificate(await self.request.client_certificate())

    def load_certificate_now(self) -> bool:
        """Take the client certificate without waiting when the connection already has the
        answer: the handshake asked for it, or a late request on this connection is over
        (its answer, maybe null, stands for the connection's later requests). False when it
        would have to be asked for, or is being asked for."""
        if self.certificate_loaded:
            return True
        request = self.request
        info = request.connection
        if request.certificate_source is None or info.handshake_certificate is not None:
            certificate = info.handshake_certificate   # (on-demand: a resumed session's)
        else:
            if info.late_origin is None:
                return False
            certificate = info.late_certificate
            request.certificate_origin = info.late_origin     # as the late fetch says
        self._use_certificate(certificate)
        return True

    def _use_certificate(self, certificate: x509.Certificate | None) -> None:
        if certificate is None:
            self.provide_certificate(None)
            return
        # One view per connection: its names and hashes are computed once, not per request.
        # The memo is keyed by this connection's certificate object: the shared view may hold
        # an equal certificate from another connection.
        info = self.request.connection
        memo = info.certificate_view
        if memo is not None and memo[0] is certificate and memo[1] is self.verifier:
            view = memo[2]
        else:
            view = self.deployment.client_view(certificate, tuple(info.client_chain),
                                               self.verifier)
            info.certificate_view = (certificate, self.verifier, view)
        self._certificate = view

    def provide_body(self, text: str) -> None:
        """The request body as text, for ``context.Request.Body.As<string>()``."""
        self._body_text = text

    @property
    def body_loaded(self) -> bool:
        return self._body_text is not None

    async def load_body(self) -> None:
        """Buffer the request body (through ``body_loader``) for ``context.Request.Body``."""
        if self._body_text is None and self.body_loader is not None:
            self._body_text = await self.body_loader()

    async def prepare(self, expression: object) -> None:
        """Fetch what ``expression`` (compiled) reads: call before ``evaluate``."""
        if getattr(expression, "reads_certificate", False) and not self.certificate_loaded:
            await self.load_certificate()
        if getattr(expression, "reads_body", False):
            await self.load_body()

    # -- model values ------------------------------------------------------------------

    @property
    def certificate(self) -> CertificateView | None:
        if self._certificate is _NOT_FETCHED:
            raise ExpressionRuntimeError(
                "context.Request.Certificate was read before the certificate was fetched "
                "(the engine must await context.prepare(expression) first)",
                "InvalidOperationException")
        return self._certificate  # type: ignore[return-value]

    def request_body(self, preserve: bool) -> str:
        if self._body_text is None:
            raise ExpressionRuntimeError(
                "the request body was not read before evaluation (the engine must await "
                "context.prepare(expression) first)", "InvalidOperationException")
        if self.body_consumed:
            return ""
        if not preserve:
            self.body_consumed = True
        return self._body_text

    @property
    def elapsed(self) -> timedelta:
        return timedelta(seconds=time.monotonic() - self._started)


def build_context(request: Request, *, deployment: Deployment, api: ApiInfo | None = None,
                  operation: OperationInfo | None = None,
                  variables: dict[str, object] | None = None,
                  verifier: CertificateVerifier | None = None,
                  response: ResponseState | None = None,
                  body_loader: Callable[[], Awaitable[str]] | None = None) -> PolicyContext:
    """The ``context`` of ``request``: cheap (views are built lazily), once per request."""
    return PolicyContext(request, deployment, api, verifier, operation=operation,
                         variables=variables, response=response, body_loader=body_loader)


class RequestView:
    """``context.Request``."""

    __slots__ = ("context",)

    def __init__(self, context: PolicyContext) -> None:
        self.context = context


class ResponseView:
    """``context.Response``: reads ``context.response`` (a :class:`ResponseState`)."""

    __slots__ = ("context",)

    def __init__(self, context: PolicyContext) -> None:
        self.context = context


class UrlView:
    """``IUrl`` over (scheme, authority, path, query), computed when read."""

    __slots__ = ("scheme", "authority", "path", "query")

    def __init__(self, scheme: str, authority: str, path: str, query: str) -> None:
        self.scheme = scheme
        self.authority = authority
        self.path = path
        self.query = query

    @property
    def host(self) -> str:
        host, _ = _split_authority(self.authority)
        return host

    @property
    def port(self) -> int:
        _, port = _split_authority(self.authority)
        if port is not None:
            return port
        return 443 if self.scheme == "https" else 80

    @property
    def query_string(self) -> str:
        return "?" + self.query if self.query else ""

    def query_dictionary(self) -> v.MultiValueDictionary:
        return v.MultiValueDictionary(parse_qsl(self.query, keep_blank_values=True))

    def cs_to_string(self) -> str:
        host, port = _split_authority(self.authority)
        default = 443 if self.scheme == "https" else 80
        netloc = self.authority if port not in (None, default) else \
            (f"[{host}]" if ":" in host else host)
        return f"{self.scheme}://{netloc}{self.path or '/'}{self.query_string}"


def _split_authority(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[1:end] if end > 0 else authority
        rest = authority[end + 1:] if end > 0 else ""
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = authority.partition(":")
    return host, int(port) if port.isascii() and port.isdigit() else None


class BodyView:
    """``IMessageBody`` of the request (``response=False``) or of the response."""

    __slots__ = ("context", "response")

    def __init__(self, context: PolicyContext, response: bool) -> None:
        self.context = context
        self.response = response


def _headers(pairs: list[tuple[bytes, bytes]]) -> v.MultiValueDictionary:
    return v.MultiValueDictionary((name.decode("latin-1"), header_text(value))
                                  for name, value in pairs)


def header_text(value: bytes) -> str:
    """A header value as policies see it: UTF-8 (what clients send today), with any other
    byte kept as a lone surrogate, so that :func:`header_bytes` gives the same bytes back
    (a value a policy copies goes out as it came in)."""
    return value.decode("utf-8", "surrogateescape")


def header_bytes(text: str) -> bytes:
    """A value a policy sets, as it goes on the wire: UTF-8, bytes that came in kept."""
    return text.encode("utf-8", "surrogateescape")


# -- registered types -------------------------------------------------------------------------


def _def(name: str, full_name: str, python_type: type | None = None) -> TypeDef:
    typedef = TypeDef(name, full_name=full_name, base=t.OBJECT_DEF,
                      python_types=(python_type,) if python_type else ())
    if python_type is not None:
        v.RUNTIME_TYPES[python_type] = typedef
    return typedef


def _ref(typedef: TypeDef) -> TypeRef:
    return TypeRef(typedef)


# Dictionaries with APIM's GetValueOrDefault.

HEADERS_DEF = TypeDef("IReadOnlyDictionary", full_name="System.Collections.Generic.Dictionary`2",
                      arity=2, base=t.DICTIONARY_DEF, element=t.DICTIONARY_DEF.element,
                      python_types=(v.MultiValueDictionary,))
HEADERS = TypeRef(HEADERS_DEF, (STRING, t.array_of(STRING)))
HEADERS_DEF.method("GetValueOrDefault", (Param("headerName", STRING),), STRING,
                   v.MultiValueDictionary.joined)
HEADERS_DEF.method("GetValueOrDefault",
                   (Param("headerName", STRING), Param("defaultValue", STRING)), STRING,
                   v.MultiValueDictionary.joined)


def _variable_type(site: Site) -> TypeRef:
    if site.type_args:
        return site.type_args[0]
    if len(site.args) > 1 and site.args[1] is not None and site.args[1].d is not t.NULL_DEF:
        return site.args[1]
    return OBJECT


def _variable_default_type(site: Site) -> TypeRef | None:
    return site.type_args[0] if site.type_args else None


def _bind_variable(site: Site) -> Callable:
    target = _variable_type(site)
    default = v.default_of(target)
    full_name = target.d.full_name
    check = v.is_instance
    convert_double = target.d is t.DOUBLE_DEF

    def get(dictionary: v.CsDictionary, name: str, fallback: object = default) -> object:
        value = dictionary.lookup(name, _MISSING)
        if value is _MISSING:
            return fallback
        if value is None or target.d is t.OBJECT_DEF or check(value, target):
            if value is None and not t.can_be_null(target):
                return fallback
            return value
        if convert_double and type(value) is int:
            return float(value)
        raise invalid_cast(v.runtime_type_name(value), full_name)
    return get


_MISSING = object()

VARIABLES_DEF = TypeDef("IReadOnlyDictionary", full_name="System.Collections.Generic.Dictionary`2",
                        arity=2, base=t.DICTIONARY_DEF, element=t.DICTIONARY_DEF.element,
                        python_types=(v.CsDictionary,))
VARIABLES = TypeRef(VARIABLES_DEF, (STRING, OBJECT))
VARIABLES_DEF.method("GetValueOrDefault", (Param("variableName", STRING),), _variable_type,
                     v.CsDictionary.lookup, generic=1, bind=_bind_variable)
VARIABLES_DEF.method("GetValueOrDefault", (Param("variableName", STRING),
                                           Param("defaultValue", _variable_default_type)),
                     _variable_type, v.CsDictionary.lookup, generic=1, bind=_bind_variable)

# X509Certificate2 and friends.

DN_DEF = _def("X500DistinguishedName",
              "System.Security.Cryptography.X509Certificates.X500DistinguishedName",
              DistinguishedName)
DN_DEF.prop("Name", STRING, attrgetter("name"))
DN_DEF.method("Format", (Param("multiLine", BOOL),), STRING,
              lambda dn, multi: ("\r\n".join(dn.name.split(", ")) + "\r\n") if multi else dn.name)
DN_DEF.prop("RawData", rt.BYTE_ARRAY, attrgetter("der"))

OID_DEF = _def("Oid", "System.Security.Cryptography.Oid", Oid)
OID_DEF.prop("Value", STRING, attrgetter("value"))
OID_DEF.prop("FriendlyName", STRING, attrgetter("friendly_name"))

CERT_DEF = _def("X509Certificate2",
                "System.Security.Cryptography.X509Certificates.X509Certificate2",
                CertificateView)
CERTIFICATE = _ref(CERT_DEF)
CERT_DEF.prop("Thumbprint", STRING, attrgetter("thumbprint"))
CERT_DEF.prop("Subject", STRING, attrgetter("subject_name.name"))
CERT_DEF.prop("SubjectName", _ref(DN_DEF), attrgetter("subject_name"))
CERT_DEF.prop("Issuer", STRING, attrgetter("issuer_name.name"))
CERT_DEF.prop("IssuerName", _ref(DN_DEF), attrgetter("issuer_name"))
CERT_DEF.prop("SerialNumber", STRING, attrgetter("serial_number"))
CERT_DEF.prop("NotBefore", t.DATETIME, attrgetter("not_before"))
CERT_DEF.prop("NotAfter", t.DATETIME, attrgetter("not_after"))
CERT_DEF.prop("Version", INT, lambda c: c.certificate.version.value + 1)
CERT_DEF.prop("FriendlyName", STRING, lambda c: "")
CERT_DEF.prop("HasPrivateKey", BOOL, attrgetter("has_private_key"))
CERT_DEF.prop("Archived", BOOL, lambda c: False)
CERT_DEF.prop("RawData", rt.BYTE_ARRAY, lambda c: c.certificate.public_bytes(Encoding.DER))
CERT_DEF.prop("SignatureAlgorithm", _ref(OID_DEF), lambda c: Oid(
    c.certificate.signature_algorithm_oid.dotted_string,
    _SIGNATURE_NAMES.get(c.certificate.signature_algorithm_oid.dotted_string, "")))
CERT_DEF.method("GetNameInfo", (Param("nameType", rt.X509_NAME_TYPE), Param("forIssuer", BOOL)),
                STRING, CertificateView.name_info)
CERT_DEF.method("Verify", (), BOOL, methodcaller("verify", True), reads="verify")
CERT_DEF.method("VerifyNoRevocation", (), BOOL, methodcaller("verify", False),
                reads="verify")
CERT_DEF.method("GetCertHashString", (), STRING, attrgetter("thumbprint"))
CERT_DEF.method("GetSerialNumberString", (), STRING, attrgetter("serial_number"))
CERT_DEF.method("GetRawCertData", (), rt.BYTE_ARRAY,
                lambda c: c.certificate.public_bytes(Encoding.DER))
CERT_DEF.method("GetExpirationDateString", (), STRING,
                lambda c: format_datetime(c.not_after, "G"))
CERT_DEF.method("GetEffectiveDateString", (), STRING,
                lambda c: format_datetime(c.not_before, "G"))
CERT_DEF.method("ToString", (), STRING, CertificateView.cs_to_string)
CERT_DEF.method("Equals", (Param("other", OBJECT),), BOOL, CertificateView.cs_equals)


# Request, URL, body, response.

URL_DEF = _def("IUrl", "Microsoft.ApiManagement.IUrl", UrlView)
URL_DEF.prop("Scheme", STRING, attrgetter("scheme"))
URL_DEF.prop("Host", STRING, attrgetter("host"))
URL_DEF.prop("Port", INT, attrgetter("port"))
URL_DEF.prop("Path", STRING, attrgetter("path"))
URL_DEF.prop("QueryString", STRING, attrgetter("query_string"))
URL_DEF.prop("Query", HEADERS, UrlView.query_dictionary)
URL_DEF.method("ToString", (), STRING, UrlView.cs_to_string)


def _body_type(site: Site) -> TypeRef:
    if not site.type_args:
        raise MemberUseError("'As' needs a type argument: As<string>()")
    if site.type_args[0] != STRING:
        raise MemberUseError(f"As<{site.type_args[0]}>() is not supported by tlsgate; use "
                             "As<string>()")
    return STRING


REQUEST_BODY_DEF = _def("IMessageBody", "Microsoft.ApiManagement.IMessageBody")
REQUEST_BODY_DEF.method(
    "As", (Param("preserveContent", BOOL, optional=True, default=False),), _body_type,
    lambda body, preserve: body.context.request_body(preserve), generic=1, reads="body")
RESPONSE_BODY_DEF = _def("IMessageBody", "Microsoft.ApiManagement.IMessageBody")
RESPONSE_BODY_DEF.method(
    "As", (Param("preserveContent", BOOL, optional=True, default=False),), _body_type,
    lambda body, preserve: body.context.response.body_text or "", generic=1)
v.RUNTIME_TYPES[BodyView] = REQUEST_BODY_DEF


def _context_prop(view_def: t.TypeDef, name: str, type_: t.TypeLike, through: Callable,
                  **options: object) -> None:
    """A member of a view over the context (``context.Request.X``, ``context.Response.X``),
    given as read from the context: compiled expressions call ``through(context)`` and make
    no view (see ``Property.view``); a view kept in a variable reads ``view.context``."""
    view_def.prop(name, type_, lambda view: through(view.context), through=through, **options)


REQUEST_DEF = _def("IRequest", "Microsoft.ApiManagement.IRequest", RequestView)
_context_prop(REQUEST_DEF, "Method", STRING, attrgetter("request.method"))
_context_prop(REQUEST_DEF, "Url", _ref(URL_DEF), lambda c: UrlView(
    c.request.scheme, c.request.authority, c.request.path, c.request.query))
_context_prop(REQUEST_DEF, "OriginalUrl", _ref(URL_DEF), lambda c: UrlView(*c._original))
_context_prop(REQUEST_DEF, "Headers", HEADERS, lambda c: _headers(c.request.headers))
_context_prop(REQUEST_DEF, "IpAddress", STRING,
              lambda c: c.request.connection.client_address[0])
_context_prop(REQUEST_DEF, "Certificate", CERTIFICATE, attrgetter("certificate"),
              reads="certificate")
_context_prop(REQUEST_DEF, "Body", _ref(REQUEST_BODY_DEF), lambda c: BodyView(c, False))
_context_prop(REQUEST_DEF, "MatchedParameters", t.dictionary_of(STRING, STRING),
              lambda c: v.CsDictionary({}))

RESPONSE_DEF = _def("IResponse", "Microsoft.ApiManagement.IResponse", ResponseView)
_context_prop(RESPONSE_DEF, "StatusCode", INT, attrgetter("response.status_code"))
_context_prop(RESPONSE_DEF, "StatusReason", STRING, attrgetter("response.status_reason"))
_context_prop(RESPONSE_DEF, "Headers", HEADERS, lambda c: _headers(c.response.headers))
_context_prop(RESPONSE_DEF, "Body", _ref(RESPONSE_BODY_DEF), lambda c: BodyView(c, True))

# Deployment, errors, API, operation, and the APIM types tlsgate has no data for.

DEPLOYMENT_DEF = _def("IDeployment", "Microsoft.ApiManagement.IDeployment", Deployment)
DEPLOYMENT_DEF.prop("Certificates", t.dictionary_of(STRING, CERTIFICATE),
                    attrgetter("certificates"))
DEPLOYMENT_DEF.prop("ServiceName", STRING, attrgetter("service_name"))
DEPLOYMENT_DEF.prop("ServiceId", STRING, attrgetter("service_name"))
DEPLOYMENT_DEF.prop("Region", STRING, attrgetter("region"))
DEPLOYMENT_DEF.prop("GatewayId", STRING, attrgetter("gateway_id"))

ERROR_DEF = _def("IProxyError", "Microsoft.ApiManagement.IProxyError", LastError)
for _name, _attr in (("Source", "source"), ("Reason", "reason"), ("Message", "message"),
                     ("Scope", "scope"), ("Section", "section"), ("Path", "path"),
                     ("PolicyId", "policy_id")):
    ERROR_DEF.prop(_name, STRING, (lambda e, a=_attr: getattr(e, a)))

API_DEF = _def("IApi", "Microsoft.ApiManagement.IApi", ApiInfo)
for _name, _attr in (("Id", "id"), ("Name", "name"), ("Path", "path"), ("Version", "version"),
                     ("Revision", "revision")):
    API_DEF.prop(_name, STRING, (lambda a, attr=_attr: getattr(a, attr)))
API_DEF.prop("IsCurrentRevision", BOOL, lambda a: True)
API_DEF.prop("ServiceUrl", _ref(URL_DEF), lambda a: _service_url(a.service_url))

OPERATION_DEF = _def("IOperation", "Microsoft.ApiManagement.IOperation", OperationInfo)
for _name, _attr in (("Id", "id"), ("Method", "method"), ("Name", "name"),
                     ("UrlTemplate", "url_template")):
    OPERATION_DEF.prop(_name, STRING, (lambda o, attr=_attr: getattr(o, attr)))

# Subscriptions, users and products do not exist in tlsgate: typed, always null.
_ABSENT = {
    "ISubscription": ("Id", "Key", "Name", "PrimaryKey", "SecondaryKey"),
    "IUser": ("Id", "Email", "FirstName", "LastName", "Note"),
    "IProduct": ("Id", "Name"),
}
_ABSENT_DEFS = {}
for _type_name, _members in _ABSENT.items():
    _absent = _def(_type_name, f"Microsoft.ApiManagement.{_type_name}")
    for _member in _members:
        _absent.prop(_member, STRING, lambda _: "")
    _ABSENT_DEFS[_type_name] = _absent

CONTEXT_DEF = _def("IProxyRequestContext", "Microsoft.ApiManagement.IProxyRequestContext",
                   PolicyContext)
CONTEXT_TYPE = _ref(CONTEXT_DEF)
CONTEXT_DEF.prop("Request", _ref(REQUEST_DEF), PolicyContext.request_view.fget, non_null=True,
                 view=True)
CONTEXT_DEF.prop("Response", _ref(RESPONSE_DEF), PolicyContext.response_view.fget,
                 non_null=True, view=True)
CONTEXT_DEF.prop("Variables", VARIABLES, PolicyContext.variables_view.fget, non_null=True)
CONTEXT_DEF.prop("Deployment", _ref(DEPLOYMENT_DEF), attrgetter("deployment"))
CONTEXT_DEF.prop("LastError", _ref(ERROR_DEF), attrgetter("last_error"))
CONTEXT_DEF.prop("RequestId", t.GUID, attrgetter("request_id"))
CONTEXT_DEF.prop("Timestamp", t.DATETIME, attrgetter("timestamp"))
CONTEXT_DEF.prop("Elapsed", t.TIMESPAN, attrgetter("elapsed"))
CONTEXT_DEF.prop("Api", _ref(API_DEF), attrgetter("api"), non_null=True)
CONTEXT_DEF.prop("Operation", _ref(OPERATION_DEF), PolicyContext.operation_info.fget,
                 non_null=True)
CONTEXT_DEF.prop("Tracing", BOOL, attrgetter("tracing"))
CONTEXT_DEF.prop("Subscription", _ref(_ABSENT_DEFS["ISubscription"]), lambda c: None)
CONTEXT_DEF.prop("User", _ref(_ABSENT_DEFS["IUser"]), lambda c: None)
CONTEXT_DEF.prop("Product", _ref(_ABSENT_DEFS["IProduct"]), lambda c: None)


def _service_url(url: str | None) -> UrlView | None:
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return UrlView(parts.scheme, parts.netloc, parts.path, parts.query)


rt.register_type("X509Certificate2", CERT_DEF, "System.Security.Cryptography.X509Certificates")
rt.register_type("X500DistinguishedName", DN_DEF,
                 "System.Security.Cryptography.X509Certificates")
