"""C# operators: static typing at compile time, a specialised closure for run time.

Each function takes compiled operands (:class:`V`: closure, static type, whether it can be
null) and returns the compiled result, or raises :class:`~.errors.PolicyExpressionError` when
C# would refuse the operands (``"a" < "b"``, ``!5``, ``string[] == string``).

Semantics kept from C#:

* ``==`` on strings is ordinal and null-safe; on other reference types it is reference
  equality; value types compare by value.
* ``+`` with a string operand concatenates, null giving ``""`` and other values their
  ``ToString()``.
* int and long arithmetic wraps at 32/64 bits; integer division truncates toward zero;
  division by zero throws; double arithmetic follows IEEE (``1.0 / 0`` is infinity).
* ``&&`` and ``||`` short-circuit and accept only ``bool``.
* Operators on nullable value types are lifted: null in gives null out (comparisons give
  false).
* DateTime - DateTime is a TimeSpan, DateTime ± TimeSpan a DateTime; both compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import NamedTuple

from . import types as t
from . import values as v
from .errors import ExpressionRuntimeError, PolicyExpressionError, overflow
from .formatting import to_string
from .inline import Value, shaped
from .nodes import Node
from .runtime import INT_MAX, INT_MIN, LONG_MAX, LONG_MIN, wrap32, wrap64
from .types import BOOL, DATETIME, DOUBLE, INT, LONG, NULL, STRING, TIMESPAN, TypeRef


class V(NamedTuple):
    """A compiled expression: ``fn(frame)`` gives its value."""

    fn: Callable
    type: TypeRef
    non_null: bool = False
    #: For a view (``context.Request``): what gives the object it wraps (see Property.view).
    view_of: Callable | None = None

    @property
    def can_be_null(self) -> bool:
        return not self.non_null and t.can_be_null(self.type)


def error(node: Node, message: str) -> PolicyExpressionError:
    return PolicyExpressionError(message, node.line, node.col)


def _operands_error(op: str, left: V, right: V, node: Node) -> PolicyExpressionError:
    return error(node, f"operator '{op}' cannot be applied to operands of type "
                       f"'{left.type}' and '{right.type}'")


# -- helpers -------------------------------------------------------------------------------


def _is_char(type_: TypeRef) -> bool:
    return t.underlying(type_).d is t.CHAR_DEF


def as_number(operand: V) -> Callable:
    """The operand's closure, with chars turned into their code (C# promotes char to int)."""
    if _is_char(operand.type):
        fn = operand.fn
        return lambda f: None if (x := fn(f)) is None else ord(x)
    return operand.fn


def coerce(operand: V, target: TypeRef) -> Callable:
    """The operand's closure converted implicitly to ``target`` (int to double, char to int)."""
    source = t.underlying(operand.type)
    goal = t.underlying(target)
    fn = operand.fn
    if goal.d is t.DOUBLE_DEF and source.d in (t.INT_DEF, t.LONG_DEF, t.BYTE_DEF, t.CHAR_DEF):
        number = as_number(operand)
        if t.is_nullable(operand.type):
            return lambda f: None if (x := number(f)) is None else float(x)
        return lambda f: float(number(f))
    if goal.d in (t.INT_DEF, t.LONG_DEF) and source.d is t.CHAR_DEF:
        return as_number(operand)
    return fn


def _lift(op: Callable, a: Callable, b: Callable, lifted: bool) -> Callable:
    if lifted:
        def run(f):
            x = a(f)
            if x is None:
                return None
            y = b(f)
            if y is None:
                return None
            return op(x, y)
        return run
    return lambda f: op(a(f), b(f))


def _lifted(*operands: V) -> bool:
    return any(t.is_nullable(o.type) or o.type.d is t.NULL_DEF for o in operands)


# -- arithmetic ----------------------------------------------------------------------------


def _int_ops(low: int, high: int, wrap: Callable[[int], int]) -> dict[str, Callable]:
    def add(x, y):
        r = x + y
        return r if low <= r <= high else wrap(r)

    def sub(x, y):
        r = x - y
        return r if low <= r <= high else wrap(r)

    def mul(x, y):
        r = x * y
        return r if low <= r <= high else wrap(r)

    def div(x, y):
        if y == 0:
            raise ExpressionRuntimeError("Attempted to divide by zero.", "DivideByZeroException")
        q = abs(x) // abs(y)
        q = -q if (x < 0) != (y < 0) else q
        if q > high:
            raise overflow()
        return q

    def mod(x, y):
        if y == 0:
            raise ExpressionRuntimeError("Attempted to divide by zero.", "DivideByZeroException")
        r = abs(x) % abs(y)
        return -r if x < 0 else r

    return {"+": add, "-": sub, "*": mul, "/": div, "%": mod}


def _double_div(x: float, y: float) -> float:
    try:
        return x / y
    except ZeroDivisionError:
        if x == 0 or x != x:
            return math.nan
        return math.copysign(math.inf, x) * math.copysign(1.0, y)


def _double_mod(x: float, y: float) -> float:
    if y == 0 or math.isinf(x):
        return math.nan
    return math.fmod(x, y)


def _double_mul(x: float, y: float) -> float:
    return float(x) * y


_ARITHMETIC = {
    "int": _int_ops(INT_MIN, INT_MAX, wrap32),
    "long": _int_ops(LONG_MIN, LONG_MAX, wrap64),
    "double": {"+": lambda x, y: float(x) + y, "-": lambda x, y: float(x) - y,
               "*": _double_mul, "/": _double_div, "%": _double_mod},
}


def _checked(fn: Callable, message: str) -> Callable:
    def run(x, y):
        try:
            return fn(x, y)
        except OverflowError:
            raise overflow(message) from None
    return run


_SPAN_OVERFLOW = "TimeSpan overflowed because the duration is too long."


def _span_scale(x: timedelta, y: float) -> timedelta:
    if y != y:
        raise ExpressionRuntimeError("TimeSpan does not accept floating point Not-a-Number "
                                     "values.", "ArgumentException")
    return x * y


def _span_divide(x: timedelta, y: object) -> object:
    if isinstance(y, timedelta):
        return _double_div(x.total_seconds(), y.total_seconds())
    if y == 0:
        raise overflow(_SPAN_OVERFLOW)
    return x / y  # type: ignore[operator]


def _concat_piece(operand: V) -> Callable:
    fn = operand.fn
    if operand.type.d is t.STRING_DEF:
        return lambda f: fn(f) or ""
    if operand.type.d is t.NULL_DEF:
        return lambda f: ""
    return lambda f: to_string(fn(f))


def arithmetic(op: str, left: V, right: V, node: Node) -> V:
    """``+ - * / %``."""
    lt, rt = t.underlying(left.type), t.underlying(right.type)
    if op == "+" and (lt.d is t.STRING_DEF or rt.d is t.STRING_DEF):
        if lt.d is t.STRING_DEF and rt.d is t.STRING_DEF:
            a, b = left.fn, right.fn
            return V(lambda f: (a(f) or "") + (b(f) or ""), STRING, True)
        a, b = _concat_piece(left), _concat_piece(right)
        return V(lambda f: a(f) + b(f), STRING, True)
    lifted = _lifted(left, right)
    if left.type.d is t.NULL_DEF or right.type.d is t.NULL_DEF:
        other = right if left.type.d is t.NULL_DEF else left
        if t.is_numeric(t.underlying(other.type)):
            result = t.nullable(t.promote(t.underlying(other.type), t.underlying(other.type)))
            return V(lambda f: None, result)
        raise _operands_error(op, left, right, node)
    if t.is_numeric(lt) and t.is_numeric(rt):
        result = t.promote(lt, rt)
        kind = result.d.name
        fn = _lift(_ARITHMETIC[kind][op], as_number(left), as_number(right), lifted)
        return V(fn, t.nullable(result) if lifted else result)
    span_op = _span_arithmetic(op, lt, rt)
    if span_op is not None:
        impl, result = span_op
        fn = _lift(impl, as_number(left), as_number(right), lifted)
        return V(fn, t.nullable(result) if lifted else result)
    raise _operands_error(op, left, right, node)


def _span_arithmetic(op: str, lt: TypeRef, rt: TypeRef) -> tuple[Callable, TypeRef] | None:
    dt, span = t.DATETIME_DEF, t.TIMESPAN_DEF
    if op == "+":
        if lt.d is dt and rt.d is span:
            return v.DateTime.add, DATETIME
        if lt.d is span and rt.d is span:
            return _checked(lambda x, y: x + y, _SPAN_OVERFLOW), TIMESPAN
    if op == "-":
        if lt.d is dt and rt.d is dt:
            return (lambda x, y: x.value - y.value), TIMESPAN
        if lt.d is dt and rt.d is span:
            return (lambda x, y: x.add(-y)), DATETIME
        if lt.d is span and rt.d is span:
            return _checked(lambda x, y: x - y, _SPAN_OVERFLOW), TIMESPAN
    if op == "*":
        if lt.d is span and t.is_numeric(rt):
            return _checked(_span_scale, _SPAN_OVERFLOW), TIMESPAN
        if t.is_numeric(lt) and rt.d is span:
            return _checked(lambda x, y: _span_scale(y, x), _SPAN_OVERFLOW), TIMESPAN
    if op == "/" and lt.d is span:
        if rt.d is span:
            return _span_divide, DOUBLE
        if t.is_numeric(rt):
            return _checked(_span_divide, _SPAN_OVERFLOW), TIMESPAN
    return None


# -- comparison ----------------------------------------------------------------------------


_ORDERED = frozenset({t.DATETIME_DEF, t.TIMESPAN_DEF})


def _compare_fn(op: str) -> Callable:
    return {"<": lambda x, y: x < y, ">": lambda x, y: x > y,
            "<=": lambda x, y: x <= y, ">=": lambda x, y: x >= y}[op]


def relational(op: str, left: V, right: V, node: Node) -> V:
    """``< > <= >=`` on numbers, chars, DateTime, TimeSpan and enums."""
    lt, rt = t.underlying(left.type), t.underlying(right.type)
    compare = _compare_fn(op)
    if t.is_numeric(lt) and t.is_numeric(rt):
        if lt.d is t.CHAR_DEF and rt.d is t.CHAR_DEF:
            a, b = left.fn, right.fn
        else:
            a, b = as_number(left), as_number(right)
    elif (lt.d in _ORDERED or lt.d.enum_values) and lt == rt:
        a, b = left.fn, right.fn
    elif left.type.d is t.NULL_DEF or right.type.d is t.NULL_DEF:
        other = right.type if left.type.d is t.NULL_DEF else left.type
        if t.underlying(other).d.value_type and other.d is not t.NULL_DEF:
            return V(lambda f: False, BOOL)
        raise _operands_error(op, left, right, node)
    else:
        raise _operands_error(op, left, right, node)
    if _lifted(left, right):
        def run(f):
            x = a(f)
            if x is None:
                return False
            y = b(f)
            return y is not None and compare(x, y)
        return V(run, BOOL)
    return V(lambda f: compare(a(f), b(f)), BOOL)


_PLAIN_EQUALITY = frozenset({t.STRING_DEF, t.INT_DEF, t.LONG_DEF, t.DOUBLE_DEF, t.BYTE_DEF,
                             t.BOOL_DEF, t.CHAR_DEF, t.DATETIME_DEF, t.TIMESPAN_DEF,
                             t.GUID_DEF})


def _equality_allowed(lt: TypeRef, rt: TypeRef) -> bool:
    if lt.d is t.NULL_DEF or rt.d is t.NULL_DEF:
        return True  # C# allows "x == null" for every type (always false for values)
    lu, ru = t.underlying(lt), t.underlying(rt)
    if t.is_numeric(lu) and t.is_numeric(ru):
        return True
    if lu == ru:
        return True
    if lu.d is t.OBJECT_DEF or ru.d is t.OBJECT_DEF:
        return t.is_reference(lu) or t.is_reference(ru) or lu.d is ru.d
    if t.is_reference(lu) and t.is_reference(ru) and lu.d is not t.STRING_DEF and \
            ru.d is not t.STRING_DEF:
        return t.assignable(lu, ru) or t.assignable(ru, lu)
    return False


def equality(op: str, left: V, right: V, node: Node) -> V:
    """``==`` and ``!=``."""
    lt, rt = left.type, right.type
    if not _equality_allowed(lt, rt):
        raise _operands_error(op, left, right, node)
    negate = op == "!="
    lu, ru = t.underlying(lt), t.underlying(rt)
    if lt.d is t.NULL_DEF or rt.d is t.NULL_DEF:
        other = right if lt.d is t.NULL_DEF else left
        if other.type.d is t.NULL_DEF:
            return V(shaped(lambda f: not negate, "{0}", Value(not negate)), BOOL)
        fn = other.fn
        if negate:
            return V(shaped(lambda f: fn(f) is not None, "({0} is not None)", fn), BOOL)
        return V(shaped(lambda f: fn(f) is None, "({0} is None)", fn), BOOL)
    if t.is_numeric(lu) and t.is_numeric(ru) and (lu.d is t.CHAR_DEF) != (ru.d is t.CHAR_DEF):
        a, b = as_number(left), as_number(right)
    else:
        a, b = left.fn, right.fn
    if lu.d in _PLAIN_EQUALITY and ru.d in _PLAIN_EQUALITY and \
            (lu.d is t.BOOL_DEF) == (ru.d is t.BOOL_DEF):
        if negate:
            return V(shaped(lambda f: a(f) != b(f), "({0} != {1})", a, b), BOOL)
        return V(shaped(lambda f: a(f) == b(f), "({0} == {1})", a, b), BOOL)
    if t.is_reference(lu) and t.is_reference(ru) and lu.d is not t.OBJECT_DEF and \
            ru.d is not t.OBJECT_DEF:
        # Reference equality, as C# does for classes without an == operator.
        if negate:
            return V(shaped(lambda f: a(f) is not b(f), "({0} is not {1})", a, b), BOOL)
        return V(shaped(lambda f: a(f) is b(f), "({0} is {1})", a, b), BOOL)
    equals = v.cs_equals
    if negate:
        return V(shaped(lambda f: not equals(a(f), b(f)), "(not {0}({1}, {2}))", Value(equals),
                        a, b), BOOL)
    return V(shaped(lambda f: equals(a(f), b(f)), "{0}({1}, {2})", Value(equals), a, b), BOOL)


# -- logic ---------------------------------------------------------------------------------


def logical(op: str, left: V, right: V, node: Node) -> V:
    """``&& ||`` on bool; ``& | ^`` on bool and integers."""
    lt, rt = left.type, right.type
    a, b = left.fn, right.fn
    if lt.d is t.BOOL_DEF and rt.d is t.BOOL_DEF:
        if op == "&&":
            return V(shaped(lambda f: a(f) and b(f), "({0} and {1})", a, b), BOOL)
        if op == "||":
            return V(shaped(lambda f: a(f) or b(f), "({0} or {1})", a, b), BOOL)
        if op == "&":
            return V(shaped(lambda f: a(f) & b(f), "({0} & {1})", a, b), BOOL)
        if op == "|":
            return V(shaped(lambda f: a(f) | b(f), "({0} | {1})", a, b), BOOL)
        return V(shaped(lambda f: a(f) ^ b(f), "({0} ^ {1})", a, b), BOOL)
    if op in ("&", "|", "^"):
        lu, ru = t.underlying(lt), t.underlying(rt)
        if lu.d in (t.INT_DEF, t.LONG_DEF, t.CHAR_DEF, t.BYTE_DEF) and \
                ru.d in (t.INT_DEF, t.LONG_DEF, t.CHAR_DEF, t.BYTE_DEF):
            result = t.promote(lu, ru)
            wrap = wrap32 if result.d is t.INT_DEF else wrap64
            impl = {"&": lambda x, y: wrap(x & y), "|": lambda x, y: wrap(x | y),
                    "^": lambda x, y: wrap(x ^ y)}[op]
            lifted = _lifted(left, right)
            fn = _lift(impl, as_number(left), as_number(right), lifted)
            return V(fn, t.nullable(result) if lifted else result)
    raise _operands_error(op, left, right, node)


def _sign_op(op: str, result: TypeRef) -> Callable:
    if op == "+":
        return lambda x: x
    if result.d is t.DOUBLE_DEF:
        return lambda x: -x
    wrap = wrap32 if result.d is t.INT_DEF else wrap64
    return lambda x: wrap(-x)


def unary(op: str, operand: V, node: Node) -> V:
    """``! - + ~``."""
    type_ = operand.type
    base = t.underlying(type_)
    lifted = t.is_nullable(type_)
    fn = operand.fn
    if op == "!" and base.d is t.BOOL_DEF:
        if lifted:
            return V(lambda f: None if (x := fn(f)) is None else not x, type_)
        return V(shaped(lambda f: not fn(f), "(not {0})", fn), BOOL)
    if op in ("-", "+") and t.is_numeric(base):
        result = t.promote(base, base)
        number = as_number(operand)
        impl = _sign_op(op, result)
        if lifted:
            return V(lambda f: None if (x := number(f)) is None else impl(x), t.nullable(result))
        return V(lambda f: impl(number(f)), result)
    if op == "-" and base.d is t.TIMESPAN_DEF:
        negate = _checked(lambda x, _: -x, _SPAN_OVERFLOW)
        if lifted:
            return V(lambda f: None if (x := fn(f)) is None else negate(x, None), type_)
        return V(lambda f: negate(fn(f), None), TIMESPAN)
    if op == "~" and base.d in (t.INT_DEF, t.LONG_DEF, t.CHAR_DEF, t.BYTE_DEF):
        result = t.promote(base, base)
        number = as_number(operand)
        if lifted:
            return V(lambda f: None if (x := number(f)) is None else ~x, t.nullable(result))
        return V(lambda f: ~number(f), result)
    raise error(node, f"operator '{op}' cannot be applied to operand of type '{type_}'")


def binary(op: str, left: V, right: V, node: Node) -> V:
    if op in ("+", "-", "*", "/", "%"):
        return arithmetic(op, left, right, node)
    if op in ("<", ">", "<=", ">="):
        return relational(op, left, right, node)
    if op in ("==", "!="):
        return equality(op, left, right, node)
    return logical(op, left, right, node)


__all__ = ["V", "binary", "unary", "coerce", "as_number", "error", "NULL", "LONG", "INT"]
