"""Conversions between static types: what ``(T)x``, ``?:`` and implicitly typed arrays do.

:func:`cast_closure` gives the closure of an explicit conversion, or None when C# refuses it
at compile time; :func:`common_type` is the type two branches of ``?:`` (or the items of
``new[] {...}``) share.

Numeric conversions are unchecked, as C# compiles them by default: int and long wrap, and
doubles saturate when converted to integers (as .NET 9 does). Conversions from ``object``
(unboxing and downcasts) are checked at run time and throw InvalidCastException, or
NullReferenceException when a null is unboxed to a value type.
"""

from __future__ import annotations

from collections.abc import Callable

from . import runtime as rt
from . import types as t
from . import values as v
from .errors import ExpressionRuntimeError, invalid_cast, null_reference
from .operators import V
from .types import OBJECT, TypeRef


def common_type(a: TypeRef, b: TypeRef) -> TypeRef | None:
    """The type of ``c ? a : b`` (and of implicitly typed arrays)."""
    if a == b:
        return a
    if a.d is t.NULL_DEF:
        return t.nullable(b) if b.d.value_type else b
    if b.d is t.NULL_DEF:
        return t.nullable(a) if a.d.value_type else a
    if t.is_numeric(a) and t.is_numeric(b):
        return t.promote(a, b)
    if t.assignable(a, b):
        return b
    if t.assignable(b, a):
        return a
    return None


def common_return_type(kinds: list[TypeRef]) -> TypeRef:
    if not kinds:
        return OBJECT
    result: TypeRef | None = kinds[0]
    for kind in kinds[1:]:
        result = common_type(result, kind) if result is not None else None
    return result or OBJECT


_INTEGRAL = frozenset({t.INT_DEF, t.LONG_DEF, t.BYTE_DEF, t.CHAR_DEF})


def _numeric_conversion(source: t.TypeDef, target: t.TypeDef) -> Callable | None:
    """Explicit numeric conversion, unchecked as C# compiles it by default (doubles saturate,
    as .NET 9 does)."""
    def to_integer(low: int, high: int, wrap: Callable) -> Callable:
        def convert(x):
            if type(x) is float:
                if x != x:
                    return 0
                if x >= high:
                    return high
                if x <= low:
                    return low
                return int(x)
            if type(x) is v.Char:
                x = ord(x)
            return wrap(x)
        return convert

    if target is t.INT_DEF:
        return to_integer(rt.INT_MIN, rt.INT_MAX, rt.wrap32)
    if target is t.LONG_DEF:
        return to_integer(rt.LONG_MIN, rt.LONG_MAX, rt.wrap64)
    if target is t.BYTE_DEF:
        return to_integer(0, 255, lambda x: x & 0xFF)
    if target is t.DOUBLE_DEF:
        return lambda x: float(ord(x)) if type(x) is v.Char else float(x)
    if target is t.CHAR_DEF:
        if source is t.DOUBLE_DEF:
            return lambda x: v.Char(chr(int(x) & 0xFFFF)) if x == x and abs(x) < 2**63 else \
                v.Char("\0")
        return lambda x: x if type(x) is v.Char else v.Char(chr(x & 0xFFFF))
    return None


def cast_closure(value: V, target: TypeRef) -> Callable | None:
    """The closure for ``(target)value``, or None when C# forbids the conversion."""
    source = value.type
    fn = value.fn
    if source == target or target.d is t.OBJECT_DEF:
        return fn
    if source.d is t.NULL_DEF:
        return fn if t.can_be_null(target) else None
    src, dst = t.underlying(source), t.underlying(target)
    nullable_source = t.is_nullable(source)
    nullable_target = t.is_nullable(target)
    if (t.is_numeric(src) or src.d.enum_values) and (t.is_numeric(dst) or dst.d.enum_values):
        inner = _numeric_or_enum_conversion(src, dst)
        if inner is None:
            return None
        if nullable_source:
            if nullable_target:
                return lambda f: None if (x := fn(f)) is None else inner(x)
            return lambda f: inner(_nullable_value(fn(f)))
        return lambda f: inner(fn(f))
    if src == dst:
        if nullable_source and not nullable_target:
            return lambda f: _nullable_value(fn(f))
        return fn
    if t.assignable(source, target):
        return fn
    if src.d is t.OBJECT_DEF or (t.is_reference(src) and t.assignable(target, source)) or \
            src.d is t.ENUMERABLE_DEF:
        # Unboxing / downcast: checked at run time.
        check = v.is_instance
        full_name = _full_name(target)
        value_target = not t.can_be_null(target)

        def downcast(f):
            item = fn(f)
            if item is None:
                if value_target:
                    raise null_reference()
                return None
            if check(item, target):
                return item
            raise invalid_cast(v.runtime_type_name(item), full_name)
        return downcast
    return None


def _numeric_or_enum_conversion(src: TypeRef, dst: TypeRef) -> Callable | None:
    """Explicit conversion between numbers and enums (enums convert through their value)."""
    if src.d.enum_values and src == dst:
        return lambda x: x
    if src.d.enum_values:
        if dst.d.enum_values:
            to_enum = _enum_from_int(dst.d)
            return lambda x: to_enum(x.value)
        numeric = _numeric_conversion(t.INT_DEF, dst.d)
        assert numeric is not None
        return lambda x: numeric(x.value)
    if dst.d.enum_values:
        to_enum = _enum_from_int(dst.d)
        integer = _numeric_conversion(src.d, t.INT_DEF)
        assert integer is not None
        return lambda x: to_enum(integer(x))
    return _numeric_conversion(src.d, dst.d)


def _full_name(type_: TypeRef) -> str:
    if type_.d is t.ARRAY_DEF:
        return _full_name(type_.arg) + "[]"
    if type_.d is t.NULLABLE_DEF:
        return f"System.Nullable`1[{_full_name(type_.arg)}]"
    return type_.d.full_name


def _enum_from_int(typedef: t.TypeDef) -> Callable:
    by_value = {value.value: value for value in (typedef.enum_values or {}).values()}
    return lambda number: by_value.get(number) or v.EnumValue(typedef, str(number), number)


def _nullable_value(value: object) -> object:
    if value is None:
        raise ExpressionRuntimeError("Nullable object must have a value.",
                                     "InvalidOperationException")
    return value
