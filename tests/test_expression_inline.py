"""Expressions written out as one Python lambda (tlsgate.policy.csharp.inline) against the
closures they replace.

Every expression of the expression tests' tables, and hypothesis-generated ones, is compiled
twice — as usual (inlined where it can be) and with inlining off — and both are evaluated on
the same contexts: the same value (type included), or the same .NET exception kind and
message. Then a few checks that inlining happens at all, and that closures too deep for CPython's
parser stay closures.
"""

from __future__ import annotations

import math

import pytest
import test_expressions as tables
from hypothesis import HealthCheck, given, settings

from tlsgate.policy.csharp import (
    ExpressionRuntimeError,
    PolicyExpressionError,
    compile_expression,
)
from tlsgate.policy.csharp.formatting import to_string
from tlsgate.policy.csharp.inline import Value, closures_only, inline, shaped

# The expression tests' fixtures, used here as they are.
certs = tables.certs
make_context = tables.make_context

#: Expressions whose value changes from one evaluation to the next: compared by type.
_MOVING = ("NewGuid", "UtcNow", "Now", "Timestamp", "Elapsed", "RequestId")


def compiled_as_closures(text: str):
    with closures_only():
        return compile_expression(text)


def outcome(compiled, context) -> tuple:
    try:
        value = compiled.evaluate(context)
    except ExpressionRuntimeError as error:
        return ("raises", error.kind, error.message)
    if any(word in compiled.source for word in _MOVING):
        return ("value", type(value))
    if isinstance(value, float) and math.isnan(value):
        return ("value", float, "nan")
    text = repr(value)
    if " at 0x" in text:        # an object without a value repr: its C# string then
        text = to_string(value)
    return ("value", type(value), text)


def is_inlined(compiled) -> bool:
    return compiled._fn.__code__.co_filename == "<policy expression>"


def assert_same(text: str, context) -> bool:
    """Both ways give the same outcome; True when the usual way was inlined."""
    usual = compile_expression(text)
    plain = compiled_as_closures(text)
    assert not is_inlined(plain)
    assert outcome(usual, context) == outcome(plain, context), text
    return is_inlined(usual)


def test_the_tables_evaluate_alike(make_context):
    texts = [text for text, _ in tables.VALID] + [text for text, _ in tables.RUNTIME_ERRORS]
    inlined = sum(assert_same(text, make_context()) for text in texts)
    # Most expressions are member reads, calls and operators that inline.
    assert inlined > len(texts) // 2, (inlined, len(texts))


@pytest.mark.parametrize("certificate", [None, "client", "expired"])
def test_certificate_expressions_evaluate_alike(make_context, certificate):
    for text, _ in tables.CERTIFICATE_CASES:
        assert_same(text, make_context(certificate=certificate))


@pytest.mark.parametrize("certificate", [None, "client"])
def test_the_seed_condition_is_one_lambda(make_context, certificate):
    text = ('context.Request.Certificate == null || !context.Request.Certificate.Verify() || '
            'context.Request.Certificate.Thumbprint != "DESIRED"')
    assert assert_same(text, make_context(certificate=certificate))
    assert compile_expression(text)._fn.__code__.co_consts.count(None) <= 1


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tables._expressions())
def test_generated_expressions_evaluate_alike(make_context, text):
    try:
        compile_expression(text)
    except PolicyExpressionError:
        return
    assert_same(text, make_context(certificate="client"))


def test_closures_too_deep_for_the_parser_stay_closures():
    # The C# parser stops at 96 levels, which CPython's (~200 nested brackets) accepts in the
    # written-out form of every expression tried; a tree built here goes past it.
    fn = shaped(lambda f: f[0], "{0}", Value(1))
    for _ in range(300):
        fn = shaped(lambda f, inner=fn: not inner(f), "(not {0})", fn)
    assert inline(fn, {}) is fn
    shallow = shaped(lambda f: True, "{0}", Value(True))
    for _ in range(50):
        shallow = shaped(lambda f, inner=shallow: not inner(f), "(not {0})", shallow)
    assert inline(shallow, {})([None]) is True
