"""Inbound sections compiled to Python source: one function per API, made once at load time.

Why: the engine (:mod:`tlsgate.policy.engine`) interprets the statement tree per request: an
:class:`~tlsgate.policy.engine.Execution`, response targets, a generator per statement, an
``at_hand`` check per expression. For the policies gateways actually run (the seed's: a
``<choose>`` on the certificate, then a 403 or the backend) that machinery costs more than
the checks themselves. Measured in the server (``bench/hand_policy.py``): the seed policy
through the engine 75 µs per keep-alive request, the same checks written by hand 55 µs.

What: :func:`compile_pipeline` writes the inbound section as one ``async def`` — nested
``if``/``else`` for ``<choose>``, ``return`` for ``<return-response>`` — and compiles it once
with :func:`compile`. Expressions are called as the engine calls them
(``CompiledExpression.evaluate``); what they read is fetched just before, in document order,
with the same calls as the engine (:meth:`PolicyContext.load_certificate_now` /
``load_certificate``, :func:`~tlsgate.policy.engine.load_request_body`), so a late certificate
is asked for exactly when the engine would ask for it, and a ``<when>`` that is false fetches
nothing.

After the inbound section: the usual ``<backend>`` (one ``forward-request``, outbound empty)
is called directly; any other rest of the pipeline is handed to an ``Execution`` built around
the same ``context`` (:meth:`Execution.run_all` from the section after inbound). A failure in
the inbound section is handed over the same way, to run ``on-error`` exactly as the engine
does. So the generated code only ever runs the statements listed below and the engine stays
the single implementation of everything else.

Supported inbound statements (anything else, anywhere in the inbound section, keeps the whole
pipeline on the engine — :func:`compile_pipeline` returns None):

* ``<choose>`` with ``<when>`` conditions and ``<otherwise>``;
* ``<return-response>`` whose steps are constant (``set-status``, ``set-header``,
  ``set-body`` without expressions): its response is built once, here, and copied per request;
* ``<set-variable>``;
* ``<validate-client-certificate>`` (its own ``verdict``, after the same certificate fetch).

``tests/test_policy_codegen.py`` holds the generated code to the engine: every policy of the
test suite and the seed, many requests each, the same response, reason, certificate, log and
fetch order.
"""

from __future__ import annotations

import linecache
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tlsgate.http.messages import Request, Response
from tlsgate.policy.csharp import ExpressionRuntimeError
from tlsgate.policy.engine import (
    Execution,
    Forwarder,
    Outcome,
    Pipeline,
    _Target,
    certificate_seen,
    expression_error,
    ignored_reason,
    load_request_body,
    replace_request_body,
)
from tlsgate.policy.errors import PolicyFailure
from tlsgate.policy.model import PolicyContext, ResponseState
from tlsgate.policy.statements import (
    Choose,
    ForwardRequest,
    ReturnResponse,
    SetVariable,
    Statement,
    ValidateClientCertificate,
)

log = logging.getLogger("tlsgate.policy")

#: run(pipeline, request, forward, body_limit) -> the outcome, as ``Pipeline.run`` gives it.
#: (The pipeline is an argument, not a global of the generated module: the pipeline holds
#: the function, and the function's globals holding the pipeline would be a cycle.)
CompiledRun = Callable[[Pipeline, Request, Forwarder, "int | None"], Awaitable[Outcome]]

#: The inputs an expression may read in generated code: the certificate and the request body
#: are fetched as the engine fetches them; "verify" (Verify() may run) needs nothing fetched.
_READS = frozenset({"certificate", "body", "verify"})

#: Deeper than this (a <when> is one level, its condition's try another), the engine runs the
#: policy: CPython refuses source nested 100 levels deep.
MAX_DEPTH = 60


class Unsupported(Exception):
    """The inbound section has something the code generator does not write: the engine
    runs this pipeline."""


def compile_pipeline(pipeline: Pipeline) -> CompiledRun | None:
    """The pipeline's inbound section as generated code, or None (the engine runs it all)."""
    if not pipeline.inbound:
        return None
    filename = f"<policies of API {pipeline.api.name!r}>"
    try:
        source, namespace = _Generator(pipeline).module()
        code = compile(source, filename, "exec")
    except (Unsupported, SyntaxError, RecursionError, MemoryError) as why:
        log.debug("API %s: policies run by the engine (%s)", pipeline.api.name, why)
        return None
    exec(code, namespace)  # noqa: S102 - our own generated source, compiled once at load
    # Tracebacks through the generated code show its lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    run = namespace.pop("run")      # (left there, run -> its globals -> run: a cycle)
    run.source = source         # for tests and for `python -c` inspection
    return run


class _Generator:
    """Writes the module: ``run`` and the constants it reads (statements, expressions,
    prepared response parts, constant values) as globals named ``S0``, ``E1``, ``H2``, ``B3``,
    ``K4``..."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "PolicyContext": PolicyContext, "Outcome": Outcome, "Response": Response,
            "PolicyFailure": PolicyFailure, "ExpressionRuntimeError": ExpressionRuntimeError,
            "expression_error": expression_error, "load_request_body": load_request_body,
            "replace_request_body": replace_request_body, "certificate_of": certificate_seen,
            "hand_over": _hand_over, "ignored_reason": ignored_reason, "ENV": pipeline.env,
            "DEPLOYMENT": pipeline.env.deployment, "API": pipeline.api,
            "VERIFIER": pipeline.env.verifier,
        }
        self._count = 0

    def constant(self, prefix: str, value: object) -> str:
        name = f"{prefix}{self._count}"
        self._count += 1
        self.namespace[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def module(self) -> tuple[str, dict[str, Any]]:
        self.emit(0, "async def run(pipeline, request, forward, body_limit):")
        # (positional: a keyword call costs a third of making the context)
        self.emit(1, "ctx = PolicyContext(request, DEPLOYMENT, API, VERIFIER)")
        self.emit(1, "reason = None      # the access log's (a failure ignore-error let through)")
        self.emit(1, "try:")
        self.emit(2, "try:")
        self.statements(3, self.pipeline.inbound)
        self.emit(2, "except PolicyFailure as failure:")
        self.emit(3, "return await hand_over(pipeline, request, forward, body_limit, ctx, "
                     "reason, failure)")
        self.rest(2)
        self.emit(1, "finally:")
        self.emit(2, "ctx.release()")
        return "\n".join(self.lines) + "\n", self.namespace

    def rest(self, depth: int) -> None:
        """After the inbound section: the usual backend called here, anything else handed
        to the engine."""
        rest = self.pipeline.sections[1:]
        only = rest[0][1][0] if len(rest) == 1 and rest[0][0] == "backend" and \
            len(rest[0][1]) == 1 else None
        if isinstance(only, ForwardRequest) and \
                (only.timeout is None or isinstance(only.timeout, (int, float))):
            # Execution.forward, for a body a policy never replaces (no set-body here).
            self.emit(depth, "if ctx.body_consumed:")
            self.emit(depth + 1, 'replace_request_body(request, b"")')
            self.emit(depth, f"response = await forward(request, {only.timeout!r}, False)")
            self.emit(depth, "return Outcome(response, reason, certificate_of(ctx))")
        else:
            self.emit(depth, "return await hand_over(pipeline, request, forward, body_limit, "
                             "ctx, reason)")

    def statements(self, depth: int, statements: tuple[Statement, ...]) -> None:
        if depth > MAX_DEPTH:
            raise Unsupported(f"statements nested more than {MAX_DEPTH} levels deep")
        if not statements:
            self.emit(depth, "pass")
        for statement in statements:
            writer = getattr(self, f"_{type(statement).__name__}", None)
            if writer is None:
                raise Unsupported(f"{statement.name} at {statement.path}")
            writer(depth, statement)

    def value(self, depth: int, target: str, expression: Any, statement: Statement) -> None:
        """``target = <the expression's value>``, its inputs fetched first as the engine
        fetches them (Execution.at_hand, then Execution._fetch)."""
        if expression.is_constant:
            self.emit(depth, f"{target} = {self.constant('K', expression.value)}")
            return
        if not expression.reads <= _READS:
            raise Unsupported(f"an expression reading {sorted(expression.reads)}")
        if expression.reads_certificate:
            self.emit(depth, "if not ctx.load_certificate_now():")
            self.emit(depth + 1, "await ctx.load_certificate()")
        if expression.reads_body:
            self.emit(depth, "if not ctx.body_loaded:")
            self.emit(depth + 1, "ctx.provide_body(await load_request_body(request, body_limit))")
        self.emit(depth, "try:")
        self.emit(depth + 1, f"{target} = {self.constant('E', expression)}.evaluate(ctx)")
        self.emit(depth, "except ExpressionRuntimeError as exc:")
        self.emit(depth + 1, f"raise expression_error({self.constant('S', statement)}, "
                             "'inbound', exc) from None")

    # -- one writer per supported statement (named after its class) -------------------------

    def _Choose(self, depth: int, choose: Choose) -> None:
        self.emit(depth, f"# {choose.path}")
        for condition, body in choose.branches:
            self.value(depth, "chosen", condition, choose)
            self.emit(depth, "if chosen:")
            self.statements(depth + 1, body)
            self.emit(depth, "else:")
            depth += 1
        self.statements(depth, choose.otherwise or ())

    def _SetVariable(self, depth: int, statement: SetVariable) -> None:
        self.emit(depth, f"# {statement.path}")
        self.value(depth, "value", statement.value, statement)
        self.emit(depth, f"ctx.variables[{statement.variable!r}] = value")

    def _ValidateClientCertificate(self, depth: int,
                                   statement: ValidateClientCertificate) -> None:
        # ValidateClientCertificate.start: the certificate, then the statement's own verdict
        self.emit(depth, f"# {statement.path}")
        self.emit(depth, "if not ctx.load_certificate_now():")
        self.emit(depth + 1, "await ctx.load_certificate()")
        judge = f"{self.constant('S', statement)}.verdict(ctx.certificate, ENV)"
        if not statement.ignore_error:
            self.emit(depth, judge)             # passes, or raises its failure
            return
        self.emit(depth, f"ignored = {judge}")
        self.emit(depth, "if ignored is not None:")
        self.emit(depth + 1, "reason = ignored_reason(reason, ignored)")

    def _ReturnResponse(self, depth: int, statement: ReturnResponse) -> None:
        self.emit(depth, f"# {statement.path}")
        status, headers, body, length, reason = _constant_response(statement)
        self.emit(depth, f"return Outcome(Response({status!r}, "
                         f"list({self.constant('H', headers)}), {self.constant('B', body)}, "
                         f"content_length={length!r}, reason={reason!r}), reason, "
                         "certificate_of(ctx))")


def _constant_response(statement: ReturnResponse) -> tuple:
    """The response of a ``return-response`` whose steps compute nothing per request, built
    by the statements' own code (``apply``) once: (status, headers, body, length, reason)."""
    target = _Target(ResponseState())
    recorder = _ConstantSteps()
    for step in statement.steps:
        apply = getattr(step, "apply", None)
        if apply is None:
            raise Unsupported(f"{step.name} in return-response")
        work = apply(recorder, target)
        try:
            next(work)
        except StopIteration:
            continue
        raise Unsupported(f"an expression in {step.path}")
    response = target.response()
    return (response.status, tuple(response.headers), response.body,
            response.content_length, response.reason)


class _ConstantSteps:
    """What constant ``set-status`` / ``set-header`` / ``set-body`` steps call on an
    execution; a value the engine would reject keeps the engine."""

    def close_later(self, body: object) -> None:
        pass

    def expression_failure(self, statement: Statement, message: str) -> Unsupported:
        return Unsupported(message)


# -- called by the generated code -----------------------------------------------------------


def _hand_over(pipeline: Pipeline, request: Request, forward: Forwarder,
               body_limit: int | None, ctx: PolicyContext, reason: str | None,
               failure: PolicyFailure | None = None) -> Awaitable[Outcome]:
    """The engine runs the rest: ``on-error`` for an inbound ``failure``, else the sections
    after inbound."""
    execution = Execution(pipeline, request, forward, body_limit, ctx)
    execution.reason = reason
    return execution.run_all(1, failure)
