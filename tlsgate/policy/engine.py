"""The policy engine: run an API's compiled policies around the backend call.

Built once per configuration (:meth:`PolicyEngine.build`, from ``Runtime.build``): every policy
document is read, checked and compiled, the global and API scopes are composed (``<base />``)
into one :class:`Pipeline` per API, and the :class:`Environment` (certificate store views,
the chain verifier, the CA certificates) is made. Per request the gateway calls
:meth:`Pipeline.run`, which builds the ``context``, runs

    inbound → backend (``forward-request``) → outbound,

and, when a statement fails (:class:`~tlsgate.policy.errors.PolicyFailure`), ``on-error``.
``return-response`` ends the pipeline at once (outbound does not run, as in APIM).

Composition (APIM's rules): an API section containing ``<base />`` gets the global section's
statements in its place; an API section without ``<base />`` replaces the global one; a
section the API document does not have is the global one. With no ``<backend>`` anywhere,
the backend section is ``<forward-request />``. An API whose composed pipeline is just that
gets no pipeline at all (:meth:`PolicyEngine.pipeline` is None): it costs nothing.

Errors and responses:

* ``context.LastError`` is set from the failure (``Source`` = element name, ``Reason``,
  ``Message``, ``Section``, ``Path``, ``PolicyId``, ``Scope``) and ``on-error`` runs with
  ``context.Response`` already holding the *default error response*: the failure's status
  and the JSON body ``{"statusCode": ..., "message": ..., "reason": ...}``. ``on-error`` can
  change it (``set-status``, ``set-header``, ``set-body``) or replace it
  (``return-response``); what it leaves is what the client gets. A ``set-status`` without a
  ``set-body`` keeps the JSON body, with its ``statusCode`` following the new status.
* A failure inside ``on-error`` is not handled again: the client gets the default response
  of that second failure (500 for an expression).
* Expression failures answer 500 ``Internal server error``; the .NET-style detail is in
  ``context.LastError.Message`` and the log, never in the default response.
* The access log ``reason`` is the failure's reason (also when ``on-error`` handled it), or
  ``"<Reason> (ignored)"`` for a ``validate-client-certificate`` with ``ignore-error``.

Running: statements run synchronously while their inputs are at hand (the usual case: a
certificate from the handshake, no body read); from the first one that must fetch an input
or call the backend, the rest of the section is awaited (``Statement.start``,
:meth:`Execution.start_all`). What is fetched, and when, is the same either way.

Inputs: expressions that read ``context.Request.Certificate`` (and every
``validate-client-certificate``) first await the certificate through
``request.client_certificate()`` (the one hook that may renegotiate); expressions that read
``context.Request.Body`` first buffer the body (bounded by the body limit: past it, the
request fails with 413) and the buffered body is what the backend then gets. Reading it
without ``preserveContent: true`` consumes it, as in APIM: the backend then gets an empty
body unless a ``set-body`` sets a new one. Outbound expressions that read
``context.Response.Body`` buffer the response body the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from tlsgate.config.errors import ConfigError, Problem
from tlsgate.http.messages import BodyTooLarge, Request, RequestBody, Response, close_body
from tlsgate.policy import errors as e
from tlsgate.policy.csharp import ExpressionRuntimeError
from tlsgate.policy.csharp.inline import closures_only
from tlsgate.policy.document import SECTIONS, PolicyDocument, load_policy_file
from tlsgate.policy.errors import PolicyFailure
from tlsgate.policy.model import (
    ApiInfo,
    Deployment,
    LastError,
    PolicyContext,
    ResponseState,
    build_context,
)
from tlsgate.policy.statements import (
    Base,
    ForwardRequest,
    Statement,
    status_phrase,
)

log = logging.getLogger("tlsgate.policy")

#: forward(request, timeout, dynamic) -> the backend's response; supplied by the gateway.
Forwarder = Callable[[Request, float | None, bool], Awaitable[Response]]


class Environment:
    """What statements need from the loaded configuration, built once per runtime."""

    __slots__ = ("deployment", "verifier", "ca_certificates", "_certificates")

    def __init__(self, *, deployment: Deployment | None = None, verifier: Any = None,
                 ca_certificates: Sequence[x509.Certificate] = (),
                 certificates: dict[str, x509.Certificate] | None = None) -> None:
        self.deployment = deployment or Deployment({}, verifier=verifier)
        self.verifier = verifier
        self.ca_certificates = tuple(ca_certificates)
        self._certificates = dict(certificates or {})

    def certificate(self, certificate_id: str) -> x509.Certificate | None:
        """The ``[[certificate]]`` with this id (``issuer-certificate-id``)."""
        return self._certificates.get(certificate_id)


@dataclass
class Outcome:
    """What :meth:`Pipeline.run` gives the gateway."""

    response: Response
    reason: str | None = None                  # for the access log
    certificate: x509.Certificate | None = None    # the certificate the policies saw


# -- composition ----------------------------------------------------------------------------


def default_backend() -> tuple[Statement, ...]:
    return (ForwardRequest(path="forward-request[1]", scope="global"),)


def compose(global_doc: PolicyDocument | None,
            api_doc: PolicyDocument | None) -> dict[str, tuple[Statement, ...]]:
    """The effective statements of each section for an API."""
    out: dict[str, tuple[Statement, ...]] = {}
    for name in SECTIONS:
        inherited: tuple[Statement, ...]
        section = global_doc.sections.get(name) if global_doc is not None else None
        if section is not None:
            inherited = tuple(section)
        else:
            inherited = default_backend() if name == "backend" else ()
        own = api_doc.sections.get(name) if api_doc is not None else None
        if own is None:
            out[name] = inherited
            continue
        statements: list[Statement] = []
        for statement in own:
            if isinstance(statement, Base):
                statements.extend(inherited)
            else:
                statements.append(statement)
        out[name] = tuple(statements)
    return out


def _walk(statements: Iterable[Statement]) -> Iterable[Statement]:
    for statement in statements:
        yield statement
        yield from _walk(statement.children())


# -- the pipeline -----------------------------------------------------------------------------


class Pipeline:
    """The composed policies of one API; :meth:`run` runs them for a request."""

    __slots__ = ("api", "inbound", "backend", "outbound", "on_error", "sections",
                 "forward_timeouts", "env", "compiled")

    def __init__(self, sections: dict[str, tuple[Statement, ...]], env: Environment,
                 api: ApiInfo | None = None) -> None:
        self.api = api or ApiInfo()
        self.env = env
        self.inbound = sections.get("inbound", ())
        self.backend = sections.get("backend", ())
        self.outbound = sections.get("outbound", ())
        self.on_error = sections.get("on-error", ())
        #: The sections a request runs through, in order, empty ones left out.
        self.sections = tuple((name, statements) for name, statements in (
            ("inbound", self.inbound), ("backend", self.backend), ("outbound", self.outbound))
            if statements)
        #: Constant forward-request timeouts: the gateway builds a backend client for each.
        self.forward_timeouts = frozenset(
            s.timeout for section in (self.inbound, self.backend, self.outbound, self.on_error)
            for s in _walk(section)
            if isinstance(s, ForwardRequest) and isinstance(s.timeout, (int, float)))
        #: The inbound section as generated code (tlsgate.policy.codegen), when it can be.
        self.compiled: Callable[[Pipeline, Request, Forwarder, int | None],
                                Awaitable[Outcome]] | None = None

    @property
    def trivial(self) -> bool:
        """Nothing but the default ``forward-request``: the same as no policy at all."""
        return not (self.inbound or self.outbound or self.on_error) and \
            len(self.backend) == 1 and isinstance(self.backend[0], ForwardRequest) and \
            self.backend[0].timeout is None

    def run(self, request: Request, forward: Forwarder, *,
            body_limit: int | None = None) -> Awaitable[Outcome]:
        """Run the policies for ``request`` (await the result); ``forward(request, timeout,
        dynamic)`` calls the backend.

        Raises only what the client side causes (``BodyTooLarge``, ``ClientGone``,
        cancellation); every policy failure ends as a response. (A plain method handing out
        the execution's coroutine: one coroutine less per request.)"""
        compiled = self.compiled
        if compiled is not None:
            return compiled(self, request, forward, body_limit)
        return Execution(self, request, forward, body_limit).run_all()


class _Target:
    """A response being built: ``context.Response`` or a ``return-response``'s."""

    __slots__ = ("state", "body", "length", "explicit_reason", "body_set", "error_body",
                 "backend_response")

    def __init__(self, state: ResponseState, body: bytes | AsyncIterator[bytes] = b"",
                 length: int | None = None, backend_response: Response | None = None) -> None:
        self.state = state
        self.body = body
        self.length = length
        self.explicit_reason = False
        self.body_set = False
        self.error_body: tuple[str, str | None] | None = None   # (message, reason)
        #: The backend's response this target started from: sent as it is when no policy
        #: changed it (statements replace ``state.headers``, never edit the list in place).
        self.backend_response = backend_response

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.state.headers

    @headers.setter
    def headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self.state.headers = value

    def set_status(self, code: int, reason: str, *, explicit_reason: bool) -> None:
        self.state.status_code = code
        self.state.status_reason = reason
        self.explicit_reason = explicit_reason

    def set_body(self, text: str, ex: Execution) -> None:
        ex.close_later(self.body)
        data = text.encode()
        self.body = data
        self.length = None
        self.body_set = True
        self.state.body_text = text
        self.state.headers = [(n, v) for n, v in self.state.headers if n != b"content-length"]

    async def discard_body(self) -> None:
        await close_body(self.body)
        self.body = b""

    async def read_body(self, limit: int | None) -> None:
        """Buffer a streamed body (``context.Response.Body`` reads)."""
        body = self.body
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        else:
            chunks, size = [], 0
            try:
                async for chunk in body:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise ExpressionRuntimeError(
                            f"the response body is larger than {limit} bytes",
                            "InvalidOperationException")
                    chunks.append(chunk)
            finally:
                await close_body(body)
            data = b"".join(chunks)
            self.body = data
            self.length = None
            self.state.headers = [(n, v) for n, v in self.state.headers
                                  if n != b"content-length"]
        self.state.body_text = data.decode("utf-8", errors="replace")

    def response(self) -> Response:
        state = self.state
        body = self.body
        original = self.backend_response
        if original is not None and body is original.body and \
                state.headers is original.headers and state.status_code == original.status \
                and not self.explicit_reason and self.length == original.content_length:
            return original
        if self.error_body is not None and not self.body_set:
            message, reason = self.error_body
            body = _error_json(state.status_code, message, reason)
        headers = state.headers
        reason = state.status_reason.encode("utf-8") if self.explicit_reason else None
        if isinstance(body, (bytes, bytearray)):
            return Response(state.status_code, headers, bytes(body),
                            content_length=len(body) if self.length is None else self.length,
                            reason=reason)
        return Response(state.status_code, headers, body, content_length=self.length,
                        reason=reason)


def _error_json(status: int, message: str, reason: str | None) -> bytes:
    payload: dict[str, object] = {"statusCode": status, "message": message}
    if reason:
        payload["reason"] = reason
    return json.dumps(payload).encode()


class _ReplacedBody(RequestBody):
    """A request body a policy replaced (or buffered). Closing it closes the body it replaced
    too: the HTTP layer closes ``request.body`` when the request ends, and the original may
    hold a spool file (on-demand certificates)."""

    __slots__ = ("_original",)

    def __init__(self, data: bytes, original: RequestBody) -> None:
        super().__init__(len(data))
        if data:
            self.feed(data)
        self.finish()
        self._original = original

    def close_spool(self) -> None:
        self._original.close_spool()
        super().close_spool()


class _RequestTarget:
    """The request as inbound ``set-header`` / ``set-body`` change it."""

    __slots__ = ("execution",)

    def __init__(self, execution: Execution) -> None:
        self.execution = execution

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self.execution.request.headers

    @headers.setter
    def headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self.execution.request.headers = value

    def set_body(self, text: str, ex: Execution) -> None:
        execution = self.execution
        replace_request_body(execution.request, text.encode())
        execution.ctx.provide_body(text)
        execution.ctx.body_consumed = False
        execution.body_replaced = True


class Execution:
    """The state of one request going through a :class:`Pipeline`."""

    __slots__ = ("pipeline", "env", "request", "ctx", "section", "returned", "target",
                 "final", "reason", "body_replaced", "_forward", "_body_limit", "_to_close")

    def __init__(self, pipeline: Pipeline, request: Request, forward: Forwarder,
                 body_limit: int | None, ctx: PolicyContext | None = None) -> None:
        self.pipeline = pipeline
        self.env = pipeline.env
        self.request = request
        self._forward = forward
        self._body_limit = body_limit
        if ctx is None:     # (given: a compiled inbound section ran first, see codegen)
            ctx = build_context(request, deployment=self.env.deployment, api=pipeline.api,
                                verifier=self.env.verifier)
        self.ctx: PolicyContext = ctx
        self.target = _Target(ctx.response)
        self.section = "inbound"
        self.returned = False
        self.final: _Target | None = None
        self.reason: str | None = None
        self.body_replaced = False
        # Streamed bodies a statement dropped while running synchronously (set-body,
        # return-response): closed before the next wait, or before the outcome.
        self._to_close: list[AsyncIterator[bytes]] | None = None

    # -- the sections -------------------------------------------------------------------

    async def run_all(self, first: int = 0, failure: PolicyFailure | None = None) -> Outcome:
        """Run the pipeline's sections from ``first`` (or, given a ``failure`` of the
        section before, ``on-error``) and give the outcome."""
        try:
            try:
                if failure is not None:
                    raise failure
                sections = self.pipeline.sections
                for name, statements in sections[first:] if first else sections:
                    self.section = name
                    pending = self.start_all(statements)
                    if pending is not None:
                        await pending
                    if self.returned:
                        break
            except PolicyFailure as failure:
                failure.section = failure.section or self.section
                await self._on_error(failure)
            if self._to_close is not None:
                await self._close_dropped()
            target = self.final or self.target
            return Outcome(target.response(), self.reason, certificate_seen(self.ctx))
        except BaseException:
            if self._to_close is not None:
                await self._close_dropped()
            await self.target.discard_body()
            raise
        finally:
            self.ctx.release()

    async def run(self, statements: Sequence[Statement]) -> None:
        pending = self.start_all(statements)
        if pending is not None:
            await pending

    def start_all(self, statements: Sequence[Statement],
                  first: int = 0) -> Awaitable[None] | None:
        """Run statements synchronously while they can (see ``Statement.start``); from the
        first one that has to wait, the rest is returned as an awaitable."""
        for index in range(first, len(statements)):
            pending = statements[index].start(self)
            if pending is not None:
                if index + 1 == len(statements) and self._to_close is None:
                    return pending          # the last one (a forward-request, usually)
                return self._continue(pending, statements, index + 1)
            if self.returned:
                return None
        return None

    async def _continue(self, pending: Awaitable[None], statements: Sequence[Statement],
                        first: int) -> None:
        if self._to_close is not None:
            try:
                await self._close_dropped()     # not held while this statement waits
            except BaseException:
                getattr(pending, "close", lambda: None)()     # never to be awaited now
                raise
        await pending
        if not self.returned and first < len(statements):
            await self.run(statements[first:])

    def at_hand(self, expression: Any) -> bool:
        """Whether ``expression`` can be evaluated now, without fetching an input. A
        certificate from the handshake is taken now (no I/O); one that would have to be
        asked for late, or a body not yet received, is not at hand."""
        if expression.is_constant or not expression.reads:
            return True
        ctx = self.ctx
        if expression.reads_certificate and not ctx.load_certificate_now():
            return False
        if expression.reads_body and not ctx.body_loaded:
            return False
        return "response_body" not in expression.reads or \
            self.target.state.body_text is not None

    async def _fetch(self, expression: Any, statement: Statement) -> None:
        """Fetch what ``expression`` reads and is not at hand yet."""
        ctx = self.ctx
        if expression.reads_certificate and not ctx.certificate_loaded:
            await ctx.load_certificate()
        if expression.reads_body and not ctx.body_loaded:
            # (not through a body_loader: a context pointing back at its execution would be
            # a reference cycle, left to the cyclic garbage collector on every request)
            ctx.provide_body(await load_request_body(self.request, self._body_limit))
        if "response_body" in expression.reads and self.target.state.body_text is None:
            try:
                await self.target.read_body(self._body_limit)
            except ExpressionRuntimeError as exc:
                raise self._expression_error(statement, exc) from None

    def close_later(self, body: bytes | AsyncIterator[bytes]) -> None:
        """A streamed body dropped by a statement running synchronously: closed before the
        next wait, or before the outcome."""
        if not isinstance(body, (bytes, bytearray)):
            if self._to_close is None:
                self._to_close = []
            self._to_close.append(body)

    async def _close_dropped(self) -> None:
        dropped, self._to_close = self._to_close or [], None
        for body in dropped:
            await close_body(body)

    async def _on_error(self, failure: PolicyFailure) -> None:
        if self.reason is None or self.reason.endswith("(ignored)"):
            self.reason = failure.reason
        self.ctx.last_error = LastError(
            source=failure.source, reason=failure.reason, message=failure.message,
            scope=failure.scope, section=failure.section, path=failure.path,
            policy_id=failure.policy_id)
        await self.target.discard_body()
        self.final = None
        self.returned = False
        self._use_target(self._error_target(failure))
        self.section = "on-error"
        try:
            await self.run(self.pipeline.on_error)
        except PolicyFailure as second:
            log.warning("on-error failed too (%s: %s); the default error response is sent",
                        second.reason, second.message)
            self.final = None
            self._use_target(self._error_target(second))

    def _error_target(self, failure: PolicyFailure) -> _Target:
        state = ResponseState(failure.status, status_phrase(failure.status),
                              [(b"content-type", b"application/json")])
        target = _Target(state)
        target.error_body = (failure.public_message, failure.reason)
        return target

    def _use_target(self, target: _Target) -> None:
        self.target = target
        self.ctx.response = target.state

    # -- what statements call -------------------------------------------------------------

    async def value(self, expression: Any, statement: Statement) -> object:
        """Evaluate a compiled expression, fetching what it reads first."""
        if not self.at_hand(expression):
            await self._fetch(expression, statement)
        return self.value_now(expression, statement)

    def value_now(self, expression: Any, statement: Statement) -> object:
        """Evaluate a compiled expression whose inputs are at hand."""
        if expression.is_constant:
            return expression.value
        try:
            return expression.evaluate(self.ctx)
        except ExpressionRuntimeError as exc:
            raise self._expression_error(statement, exc) from None

    def _expression_error(self, statement: Statement,
                          exc: ExpressionRuntimeError) -> PolicyFailure:
        return expression_error(statement, self.section, exc)

    def expression_failure(self, statement: Statement, message: str) -> PolicyFailure:
        """A value an expression computed cannot be used (bad status code, header...)."""
        log.warning("policy value rejected in %s (%s): %s", statement.path, self.section,
                    message)
        return statement.failure(e.EXPRESSION_FAILURE, f"Expression evaluation failed. {message}",
                                 500, public_message=e.INTERNAL_ERROR_MESSAGE)

    def request_target(self) -> _RequestTarget:
        return _RequestTarget(self)

    def response_target(self) -> _Target:
        return self.target

    def new_response(self) -> _Target:
        return _Target(ResponseState())

    def finish(self, target: _Target) -> None:
        """``return-response``: this response goes out, nothing else runs (a backend
        response already received is closed unread)."""
        if target is not self.target:
            self.close_later(self.target.body)
            self.target.body = b""
        self.final = target
        self.returned = True

    def ignored(self, reason: str) -> None:
        self.reason = ignored_reason(self.reason, reason)

    async def forward(self, timeout: float | None, *, dynamic: bool) -> None:
        """``forward-request``: the backend's response becomes ``context.Response``."""
        if self.ctx.body_consumed and not self.body_replaced:
            # Read without preserveContent: the original body is gone (as in APIM).
            replace_request_body(self.request, b"")
        if self.target.body:        # usually b"" here: nothing to close
            await self.target.discard_body()
        response = await self._forward(self.request, timeout, dynamic)
        state = ResponseState(response.status, status_phrase(response.status),
                              response.headers)
        self._use_target(_Target(state, response.body, response.content_length, response))


# -- shared with compiled sections (tlsgate.policy.codegen) ------------------------------------


def ignored_reason(current: str | None, reason: str) -> str:
    """The access log's reason after a failure ``ignore-error`` let through: the first one
    stays."""
    return current if current is not None else f"{reason} (ignored)"


def certificate_seen(ctx: PolicyContext) -> x509.Certificate | None:
    """The certificate the policies saw (Outcome.certificate): None when none was read."""
    if not ctx.certificate_loaded:
        return None
    view = ctx.certificate
    return view.certificate if view is not None else None


def expression_error(statement: Statement, section: str,
                     exc: ExpressionRuntimeError) -> PolicyFailure:
    """The failure of ``statement`` whose expression raised ``exc`` (logged here)."""
    level = logging.ERROR if exc.kind == "InternalError" else logging.WARNING
    log.log(level, "policy expression failed in %s (%s): %s: %s", statement.path, section,
            exc.kind, exc.message)
    return statement.failure(
        e.EXPRESSION_FAILURE, f"Expression evaluation failed. {exc.message}", 500,
        public_message=e.INTERNAL_ERROR_MESSAGE)


async def load_request_body(request: Request, body_limit: int | None) -> str:
    """Buffer the request body (``context.Request.Body``); it is then what is forwarded.
    Past the body limit this raises ``BodyTooLarge`` (the client gets 413)."""
    body = request.body
    if body_limit is not None and body.limit is None:
        body.limit = body_limit
    data = await body.read_all()
    if body_limit is not None and len(data) > body_limit:
        raise BodyTooLarge(body_limit)
    request.body = _ReplacedBody(data, body)
    return data.decode("utf-8", errors="replace")


def replace_request_body(request: Request, data: bytes) -> None:
    """The request's body becomes ``data`` (``set-body``, or a body a policy consumed)."""
    old = request.body
    body = _ReplacedBody(data, old)
    # The access log counts what the client sent, not what a policy made of it.
    body.received = old.received
    request.body = body
    headers = [(n, v) for n, v in request.headers
               if n not in (b"content-length", b"transfer-encoding")]
    if data or any(n in (b"content-length", b"transfer-encoding") for n, _ in request.headers):
        headers.append((b"content-length", str(len(data)).encode()))
    request.headers = headers


# -- the engine ------------------------------------------------------------------------------


class PolicyEngine:
    """Every API's pipeline for one loaded configuration."""

    __slots__ = ("env", "pipelines", "documents")

    def __init__(self, env: Environment, pipelines: dict[str, Pipeline],
                 documents: dict[Path, PolicyDocument] | None = None) -> None:
        self.env = env
        self.pipelines = pipelines
        self.documents = documents or {}

    def pipeline(self, api_name: str) -> Pipeline | None:
        """The API's pipeline; None when it has no policies that do anything."""
        return self.pipelines.get(api_name)

    @classmethod
    def build(cls, config: Any, *, verifier: Any = None,
              compiled: bool = True) -> PolicyEngine:
        """Load, check and compile the config's policy documents; raise
        :class:`~tlsgate.config.errors.ConfigError` with every problem found.
        ``compiled``: inbound sections as generated code and expressions as one lambda each
        where they can be; False: the engine and the expressions' closures alone."""
        with contextlib.nullcontext() if compiled else closures_only():
            return cls._build(config, verifier, compiled)

    @classmethod
    def _build(cls, config: Any, verifier: Any, compiled: bool) -> PolicyEngine:
        from tlsgate.policy.codegen import compile_pipeline  # (it imports this module)

        certificates = {cid: entry.loaded for cid, entry in config.certificates.items()
                        if entry.loaded is not None}
        from tlsgate.certs.revocation import ca_certificates_of

        env = Environment(
            deployment=Deployment(certificates, verifier=verifier), verifier=verifier,
            ca_certificates=ca_certificates_of(config.ca_certificates.values()),
            certificates={cid: loaded.certificate for cid, loaded in certificates.items()})
        problems: list[Problem] = []
        documents: dict[Path, PolicyDocument] = {}
        known = frozenset(config.certificates)

        def load(path: Path, scope: str) -> PolicyDocument | None:
            key = (path, scope)
            if key in loaded:
                return loaded[key]
            document, found = load_policy_file(path, scope=scope, certificate_ids=known)
            problems.extend(found)
            loaded[key] = document
            if document is not None:
                documents[path] = document
            return document

        loaded: dict[tuple[Path, str], PolicyDocument | None] = {}
        global_path = config.policies.global_policy
        global_doc = load(global_path, "global") if global_path is not None else None
        pipelines: dict[str, Pipeline] = {}
        for api in config.apis:
            api_doc = load(api.policy, "api") if api.policy is not None else None
            if global_doc is None and api_doc is None:
                continue
            info = ApiInfo(name=api.name, path=api.path, id=api.name,
                           service_url=api.backend if api.backend.startswith("http") else None)
            pipeline = Pipeline(compose(global_doc, api_doc), env, info)
            if not pipeline.trivial:
                if compiled:
                    pipeline.compiled = compile_pipeline(pipeline)
                pipelines[api.name] = pipeline
        if problems:
            raise ConfigError(sorted(problems, key=lambda p: (str(p.file), p.sort_key())))
        return cls(env, pipelines, documents)


def timeout_error() -> Response:
    return Response.json_error(504, "Gateway Timeout: backend did not respond in time",
                               "BackendTimeout")


async def with_timeout(call: Awaitable[Response], timeout: float) -> Response:
    """A backend call bounded by a policy's (computed) ``forward-request`` timeout."""
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        return timeout_error()


__all__ = [
    "Environment", "Execution", "Outcome", "Pipeline", "PolicyEngine", "compose",
    "default_backend", "with_timeout",
]
