"""Policy expressions: a safe subset of C#, compiled once to Python closures.

API Management policies compute values with ``@(expression)`` and ``@{ statements }``::

    compiled = compile_expression('context.Request.Certificate == null')
    compiled.reads_certificate        # True: fetch the certificate first
    await context.prepare(compiled)   # tlsgate.policy.model.PolicyContext
    compiled.evaluate(context)        # -> True / False

    value = compile_template('@(context.Request.Method)')   # attribute values
    value = compile_template('text')                         # a constant

Results are .NET values (``str``, ``int``, ``bool``, ...; see :mod:`.values`):
:func:`to_string` turns one into text as C# ``ToString()`` would (``True``, ``1.5``), with
null giving ``""``, for attribute values such as ``set-header``'s.

Compilation checks names, members, argument counts and types against an explicit registry of
.NET types and the APIM object model, and raises :class:`PolicyExpressionError` with a line
and column relative to the text it was given. Evaluation raises only
:class:`ExpressionRuntimeError`, where .NET would throw.
"""

from __future__ import annotations

from .compiled import CompiledExpression, ConstantExpression
from .compiler import compile_tree
from .errors import ExpressionRuntimeError, PolicyExpressionError
from .formatting import to_string
from .lexer import tokenize
from .parser import parse_block, parse_expression
from .types import TypeRef

__all__ = [
    "CompiledExpression", "ConstantExpression", "ExpressionRuntimeError",
    "PolicyExpressionError", "compile_expression", "compile_template", "to_string",
]


def _context_type() -> TypeRef:
    # Imported late: the object model is built on this package.
    from tlsgate.policy.model import CONTEXT_TYPE

    return CONTEXT_TYPE


def compile_expression(text: str, *, block: bool = False) -> CompiledExpression:
    """Compile the inside of ``@(...)`` (``block=False``) or of ``@{...}`` (``block=True``).

    Positions in errors are relative to ``text``: line 1, column 1 is its first character.
    """
    try:
        tokens = tokenize(text)
        tree = parse_block(tokens) if block else parse_expression(tokens)
        return compile_tree(tree, text, block, _context_type())
    except RecursionError:
        raise _too_deep() from None


def compile_template(value: str) -> CompiledExpression | ConstantExpression:
    """An attribute or element value: ``@(expression)``, ``@{ statements }`` or literal text.

    Literal text gives a :class:`ConstantExpression` (``is_constant`` is True, ``value`` the
    text). Positions in errors are relative to ``value`` (the ``@`` is line 1, column 1).
    Whitespace may follow the closing bracket; anything else after it is an error.
    """
    if value.startswith("@(") or value.startswith("@{"):
        block = value[1] == "{"
        try:
            tokens = tokenize(value[2:], 1, 3)
            terminator = ("}" if block else ")", 1, 1)
            tree = parse_block(tokens, terminator) if block else \
                parse_expression(tokens, terminator)
            return compile_tree(tree, value, block, _context_type())
        except RecursionError:
            raise _too_deep() from None
    return ConstantExpression(value)


def _too_deep() -> PolicyExpressionError:
    """Nesting the parser's own depth limit lets through (calls nest deeper in Python than
    the limit counts) but Python's recursion limit does not: an error, not a crash."""
    return PolicyExpressionError("expression is nested too deeply", 1, 1)
