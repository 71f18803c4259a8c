"""Built-in .NET types of policy expressions and the names they are known by.

Registers the members of ``object``, ``string``, ``char``, ``bool``, ``int``/``long``,
``double``, ``DateTime``, ``TimeSpan``, ``Guid``, ``Math``, ``Convert``, ``Encoding`` and the
enums ``StringComparison``, ``StringSplitOptions``, ``X509NameType``, ``DayOfWeek``,
``DateTimeKind`` (collections and LINQ are in :mod:`.linq`, the APIM object model in
:mod:`tlsgate.policy.model`).

:data:`TYPE_NAMES` maps the names that may appear in expressions (``DateTime``, ``string``,
``System.DateTime``...) to type definitions; :data:`NAMESPACES` lists the namespaces that can be
written out (``System.Text.Encoding``). Nothing else is reachable: ``System.IO`` is not a
namespace here.

Culture-sensitive .NET operations use ordinal or invariant rules (``"a".StartsWith("A",
StringComparison.CurrentCultureIgnoreCase)`` compares ordinally, ignoring case).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import math
import re
import uuid
from datetime import UTC, datetime, timedelta

from . import types as t
from . import values as v
from .errors import (
    ExpressionRuntimeError,
    argument_null,
    argument_out_of_range,
    format_error,
    index_out_of_range,
    overflow,
)
from .formatting import (
    composite_format,
    format_datetime,
    format_guid,
    format_number,
    format_timespan,
    parse_datetime,
    parse_timespan,
    timespan_ticks,
    to_string,
)
from .types import (
    BOOL,
    BYTE,
    CHAR,
    DATETIME,
    DOUBLE,
    GUID,
    INT,
    LONG,
    OBJECT,
    STRING,
    TIMESPAN,
    Param,
    TypeDef,
    TypeRef,
    array_of,
)

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
#: Longest string PadLeft/PadRight will build: beyond it, OutOfMemoryException.
MAX_STRING_LENGTH = 16 * 1024 * 1024


def P(name: str, type_: t.TypeLike = None, *, optional: bool = False, default: object = None,
      variadic: bool = False) -> Param:
    return Param(name, type_, optional=optional, default=default, variadic=variadic)


# -- enums ---------------------------------------------------------------------------------

STRING_COMPARISON_DEF = v.define_enum(
    "StringComparison", "System.StringComparison",
    ["CurrentCulture", "CurrentCultureIgnoreCase", "InvariantCulture",
     "InvariantCultureIgnoreCase", "Ordinal", "OrdinalIgnoreCase"])
SPLIT_OPTIONS_DEF = v.define_enum(
    "StringSplitOptions", "System.StringSplitOptions",
    {"None": 0, "RemoveEmptyEntries": 1, "TrimEntries": 2})
X509_NAME_TYPE_DEF = v.define_enum(
    "X509NameType", "System.Security.Cryptography.X509Certificates.X509NameType",
    ["SimpleName", "EmailName", "UpnName", "DnsName", "DnsFromAlternativeName", "UrlName"])
DAY_OF_WEEK_DEF = v.define_enum(
    "DayOfWeek", "System.DayOfWeek",
    ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"])
DATETIME_KIND_DEF = v.define_enum("DateTimeKind", "System.DateTimeKind",
                                  ["Unspecified", "Utc", "Local"])
STRING_COMPARISON = TypeRef(STRING_COMPARISON_DEF)
SPLIT_OPTIONS = TypeRef(SPLIT_OPTIONS_DEF)
X509_NAME_TYPE = TypeRef(X509_NAME_TYPE_DEF)
DAY_OF_WEEK = TypeRef(DAY_OF_WEEK_DEF)
DATETIME_KIND = TypeRef(DATETIME_KIND_DEF)
STRING_ARRAY = array_of(STRING)
CHAR_ARRAY = array_of(CHAR)
BYTE_ARRAY = array_of(BYTE)


def _ignore_case(comparison: v.EnumValue | None) -> bool:
    if comparison is None:
        raise argument_null("comparisonType")
    return comparison.name.endswith("IgnoreCase")


# -- object --------------------------------------------------------------------------------

t.OBJECT_DEF.method("ToString", (), STRING, to_string)
t.OBJECT_DEF.method("Equals", (P("obj", OBJECT),), BOOL, v.cs_equals)


# -- string --------------------------------------------------------------------------------


def _need(value: object, name: str = "value") -> None:
    if value is None:
        raise argument_null(name)


def upper(text: str) -> str:
    """Upper case with .NET's one-to-one mapping ('ß' stays 'ß')."""
    result = text.upper()
    if len(result) == len(text):
        return result
    return "".join(ch.upper() if len(ch.upper()) == 1 else ch for ch in text)


def lower(text: str) -> str:
    result = text.lower()
    if len(result) == len(text):
        return result
    return "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)


def _prepare(text: str, value: str, comparison: v.EnumValue | None) -> tuple[str, str]:
    _need(value)
    if comparison is not None and _ignore_case(comparison):
        return v.fold(text), v.fold(value)
    return text, value


def _contains(text: str, value: str, comparison: v.EnumValue | None = None) -> bool:
    text, value = _prepare(text, value, comparison)
    return value in text


def _starts_with(text: str, value: str, comparison: v.EnumValue | None = None) -> bool:
    text, value = _prepare(text, value, comparison)
    return text.startswith(value)


def _ends_with(text: str, value: str, comparison: v.EnumValue | None = None) -> bool:
    text, value = _prepare(text, value, comparison)
    return text.endswith(value)


def _string_equals(a: str | None, b: object, comparison: v.EnumValue | None = None) -> bool:
    if a is None or b is None:
        return a is b
    if type(b) is not str:
        return False
    if comparison is not None and _ignore_case(comparison):
        return v.fold(a) == v.fold(b)
    return a == b


def _index_of(text: str, value: str, start: int = 0, comparison: v.EnumValue | None = None) -> int:
    _need(value)
    if start < 0 or start > len(text):
        raise argument_out_of_range("startIndex", "Index was out of range. Must be "
                                    "non-negative and less than the size of the collection.")
    text, value = _prepare(text, value, comparison)
    return text.find(value, start)


def _last_index_of(text: str, value: str, comparison: v.EnumValue | None = None) -> int:
    text, value = _prepare(text, value, comparison)
    return text.rfind(value)


def _substring(text: str, start: int, length: int | None = None) -> str:
    if start < 0 or start > len(text):
        raise argument_out_of_range("startIndex", "startIndex cannot be larger than length of "
                                    "string." if start > len(text) else
                                    "StartIndex cannot be less than zero.")
    if length is None:
        return text[start:]
    if length < 0 or start + length > len(text):
        raise argument_out_of_range("length", "Index and length must refer to a location "
                                    "within the string.")
    return text[start:start + length]


def _replace(text: str, old: str, new: str | None) -> str:
    _need(old, "oldValue")
    if old == "":
        raise ExpressionRuntimeError("String cannot be of zero length. (Parameter 'oldValue')",
                                     "ArgumentException")
    return text.replace(old, new or "")


def _split(text: str, separators: list, options: v.EnumValue | None = None) -> list[str]:
    """``Split`` with any number of string or char separators (none: white space)."""
    flags = options.value if options is not None else 0
    seps = [s for s in separators if s]
    if not separators:
        parts = re.split(r"\s", text)
    elif not seps:
        parts = [text]
    else:
        pattern = "|".join(re.escape(s) for s in sorted(seps, key=len, reverse=True))
        parts = re.split(pattern, text)
    if flags & 2:
        parts = [p.strip() for p in parts]
    if flags & 1:
        parts = [p for p in parts if p]
    return parts


def _split_one(text: str, separator: str | None, options: v.EnumValue | None = None) -> list[str]:
    return _split(text, [separator] if separator else [""], options)


def _split_many(text: str, separators: list | None,
                options: v.EnumValue | None = None) -> list[str]:
    return _split(text, list(separators or []), options)


def _pad(left: bool):
    def pad(text: str, width: int, char: str = " ") -> str:
        if width < 0:
            raise argument_out_of_range("totalWidth", "Non-negative number required.")
        if width > MAX_STRING_LENGTH:
            raise ExpressionRuntimeError("Insufficient memory to continue the execution of "
                                         "the program.", "OutOfMemoryException")
        return text.rjust(width, char) if left else text.ljust(width, char)
    return pad


def _trim(mode: str):
    def trim(text: str, chars: list) -> str:
        spec = "".join(chars) if chars else None
        if mode == "both":
            return text.strip(spec)
        return text.lstrip(spec) if mode == "start" else text.rstrip(spec)
    return trim


def _insert(text: str, index: int, value: str) -> str:
    _need(value)
    if index < 0 or index > len(text):
        raise argument_out_of_range("startIndex", "Index was out of range.")
    return text[:index] + value + text[index:]


def _remove(text: str, start: int, count: int | None = None) -> str:
    if count is None:
        if start < 0 or start >= len(text):
            raise argument_out_of_range("startIndex", "startIndex must be less than length of "
                                        "string.")
        return text[:start]
    if start < 0 or start > len(text):
        raise argument_out_of_range("startIndex", "StartIndex cannot be less than zero.")
    if count < 0 or start + count > len(text):
        raise argument_out_of_range("count", "Index and count must refer to a location "
                                    "within the string.")
    return text[:start] + text[start + count:]


def _compare(a: str | None, b: str | None, ignore: object = False) -> int:
    if a is None or b is None:
        return 0 if a is b else (-1 if a is None else 1)
    if isinstance(ignore, v.EnumValue):
        ignore = _ignore_case(ignore)
    if ignore:
        a, b = v.fold(a), v.fold(b)
    return (a > b) - (a < b)


def _string_index(text: str, index: int) -> v.Char:
    if 0 <= index < len(text):
        return v.Char(text[index])
    raise index_out_of_range()


def _join(separator: str | None, items: object) -> str:
    _need(items, "values")
    return (separator or "").join(to_string(item) for item in v.iterate(items))


def _concat(items: object) -> str:
    return "".join(to_string(item) for item in v.iterate(items))


def _sequence(index: int):
    """Parameter type ``IEnumerable<T>`` for any T, but not a string (which would rather be
    one of the ``params`` values)."""
    def accept(site: t.Site) -> TypeRef:
        given = site.args[index] if index < len(site.args) else None
        if given is not None and given.d is not t.STRING_DEF and t.element_type(given) is not None:
            return given
        return t.enumerable_of(OBJECT)
    return accept


S = t.STRING_DEF
S.prop("Length", INT, len)
S.indexer = t.Indexer(INT, CHAR, _string_index)
S.method("ToString", (), STRING, str)
for _name, _fn in (("ToUpper", upper), ("ToUpperInvariant", upper), ("ToLower", lower),
                   ("ToLowerInvariant", lower)):
    S.method(_name, (), STRING, _fn)
S.method("Trim", (P("trimChars", CHAR, variadic=True),), STRING, _trim("both"))
S.method("TrimStart", (P("trimChars", CHAR, variadic=True),), STRING, _trim("start"))
S.method("TrimEnd", (P("trimChars", CHAR, variadic=True),), STRING, _trim("end"))
for _name, _fn in (("Contains", _contains), ("StartsWith", _starts_with),
                   ("EndsWith", _ends_with)):
    S.method(_name, (P("value", STRING),), BOOL, _fn)
    S.method(_name, (P("value", CHAR),), BOOL, _fn)
    S.method(_name, (P("value", STRING), P("comparisonType", STRING_COMPARISON)), BOOL, _fn)
S.method("Equals", (P("value", STRING),), BOOL, _string_equals)
S.method("Equals", (P("value", STRING), P("comparisonType", STRING_COMPARISON)), BOOL,
         _string_equals)
S.method("Equals", (P("obj", OBJECT),), BOOL, _string_equals)
S.method("CompareTo", (P("strB", STRING),), INT, _compare)
for _value_type in (STRING, CHAR):
    S.method("IndexOf", (P("value", _value_type),), INT, _index_of)
    S.method("IndexOf", (P("value", _value_type), P("startIndex", INT)), INT, _index_of)
    S.method("LastIndexOf", (P("value", _value_type),), INT, _last_index_of)
S.method("IndexOf", (P("value", STRING), P("comparisonType", STRING_COMPARISON)), INT,
         lambda s, value, comparison: _index_of(s, value, 0, comparison))
S.method("IndexOf", (P("value", STRING), P("startIndex", INT),
                     P("comparisonType", STRING_COMPARISON)), INT, _index_of)
S.method("LastIndexOf", (P("value", STRING), P("comparisonType", STRING_COMPARISON)), INT,
         _last_index_of)
S.method("Substring", (P("startIndex", INT),), STRING, _substring)
S.method("Substring", (P("startIndex", INT), P("length", INT)), STRING, _substring)
S.method("Replace", (P("oldValue", STRING), P("newValue", STRING)), STRING, _replace)
S.method("Replace", (P("oldChar", CHAR), P("newChar", CHAR)), STRING, _replace)
S.method("Split", (P("separator", CHAR), P("options", SPLIT_OPTIONS)), STRING_ARRAY,
         _split_one)
S.method("Split", (P("separator", STRING), P("options", SPLIT_OPTIONS, optional=True)),
         STRING_ARRAY, _split_one)
S.method("Split", (P("separator", CHAR_ARRAY), P("options", SPLIT_OPTIONS)), STRING_ARRAY,
         _split_many)
S.method("Split", (P("separator", STRING_ARRAY), P("options", SPLIT_OPTIONS)), STRING_ARRAY,
         _split_many)
S.method("Split", (P("separator", CHAR, variadic=True),), STRING_ARRAY, _split_many)
S.method("PadLeft", (P("totalWidth", INT), P("paddingChar", CHAR, optional=True, default=" ")),
         STRING, _pad(True))
S.method("PadRight", (P("totalWidth", INT), P("paddingChar", CHAR, optional=True, default=" ")),
         STRING, _pad(False))
S.method("Insert", (P("startIndex", INT), P("value", STRING)), STRING, _insert)
S.method("Remove", (P("startIndex", INT), P("count", INT, optional=True)), STRING, _remove)
S.method("ToCharArray", (), CHAR_ARRAY, lambda s: [v.Char(ch) for ch in s])

S.prop("Empty", STRING, lambda: "", static=True)
S.method("IsNullOrEmpty", (P("value", STRING),), BOOL, lambda s: not s, static=True)
S.method("IsNullOrWhiteSpace", (P("value", STRING),), BOOL,
         lambda s: s is None or s.strip() == "", static=True)
S.method("Join", (P("separator", STRING), P("values", _sequence(1))), STRING, _join, static=True)
S.method("Join", (P("separator", CHAR), P("values", _sequence(1))), STRING, _join, static=True)
S.method("Join", (P("separator", STRING), P("values", OBJECT, variadic=True)), STRING, _join,
         static=True)
S.method("Join", (P("separator", CHAR), P("values", OBJECT, variadic=True)), STRING, _join,
         static=True)
S.method("Format", (P("format", STRING), P("args", OBJECT, variadic=True)), STRING,
         composite_format, static=True)
S.method("Concat", (P("values", _sequence(0)),), STRING, _concat, static=True)
S.method("Concat", (P("values", OBJECT, variadic=True),), STRING, _concat, static=True)
S.method("Equals", (P("a", STRING), P("b", STRING)), BOOL, _string_equals, static=True)
S.method("Equals", (P("a", STRING), P("b", STRING), P("comparisonType", STRING_COMPARISON)),
         BOOL, _string_equals, static=True)
S.method("Compare", (P("strA", STRING), P("strB", STRING)), INT, _compare, static=True)
S.method("Compare", (P("strA", STRING), P("strB", STRING), P("ignoreCase", BOOL)), INT,
         _compare, static=True)
S.method("Compare", (P("strA", STRING), P("strB", STRING),
                     P("comparisonType", STRING_COMPARISON)), INT, _compare, static=True)
S.method("CompareOrdinal", (P("strA", STRING), P("strB", STRING)), INT, _compare, static=True)


# -- char, bool ----------------------------------------------------------------------------

C = t.CHAR_DEF
C.method("ToString", (), STRING, str)
for _name, _test in (("IsDigit", str.isdigit), ("IsLetter", str.isalpha),
                     ("IsLetterOrDigit", str.isalnum), ("IsWhiteSpace", str.isspace),
                     ("IsUpper", str.isupper), ("IsLower", str.islower)):
    C.method(_name, (P("c", CHAR),), BOOL, _test, static=True)
C.method("ToUpper", (P("c", CHAR),), CHAR, lambda c: v.Char(upper(c)), static=True)
C.method("ToLower", (P("c", CHAR),), CHAR, lambda c: v.Char(lower(c)), static=True)


def _parse_bool(text: str | None) -> bool:
    _need(text)
    word = text.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    raise format_error(f"String '{text}' was not recognized as a valid Boolean.")


B = t.BOOL_DEF
B.method("ToString", (), STRING, to_string)
B.method("Parse", (P("value", STRING),), BOOL, _parse_bool, static=True)
B.prop("TrueString", STRING, lambda: "True", static=True)
B.prop("FalseString", STRING, lambda: "False", static=True)


# -- numbers -------------------------------------------------------------------------------

_INTEGER = re.compile(r"\s*([+-]?)(\d+)\s*")
_REAL = re.compile(r"\s*[+-]?(\d[\d,]*\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def parse_integer(text: str | None, low: int, high: int, name: str) -> int:
    _need(text, "s")
    match = _INTEGER.fullmatch(text)  # type: ignore[arg-type]
    if match is None:
        raise format_error(f"The input string '{text}' was not in a correct format.")
    digits = match.group(2).lstrip("0")
    if len(digits) > 20:
        raise overflow(f"Value was either too large or too small for an {name}.")
    value = int(match.group(1) + (digits or "0"))
    if not low <= value <= high:
        raise overflow(f"Value was either too large or too small for an {name}.")
    return value


def parse_double(text: str | None) -> float:
    _need(text, "s")
    stripped = text.strip()  # type: ignore[union-attr]
    specials = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf, "∞": math.inf,
                "-∞": -math.inf, "+Infinity": math.inf}
    if stripped in specials:
        return specials[stripped]
    if _REAL.fullmatch(text) is None:  # type: ignore[arg-type]
        raise format_error(f"The input string '{text}' was not in a correct format.")
    return float(stripped.replace(",", ""))


def wrap32(value: int) -> int:
    return value if INT_MIN <= value <= INT_MAX else ((value + 2**31) & 0xFFFFFFFF) - 2**31


def wrap64(value: int) -> int:
    return value if LONG_MIN <= value <= LONG_MAX else ((value + 2**63) & (2**64 - 1)) - 2**63


for _def, _type, _low, _high, _net in ((t.INT_DEF, INT, INT_MIN, INT_MAX, "Int32"),
                                       (t.LONG_DEF, LONG, LONG_MIN, LONG_MAX, "Int64")):
    _def.method("ToString", (), STRING, str)
    _def.method("ToString", (P("format", STRING),), STRING, format_number)
    _def.method("CompareTo", (P("value", _type),), INT, lambda a, b: (a > b) - (a < b))
    _def.method("Equals", (P("obj", _type),), BOOL, v.cs_equals)
    _def.method("Parse", (P("s", STRING),), _type,
                (lambda s, lo=_low, hi=_high, net=_net: parse_integer(s, lo, hi, net)),
                static=True)
    _def.prop("MaxValue", _type, (lambda hi=_high: hi), static=True)
    _def.prop("MinValue", _type, (lambda lo=_low: lo), static=True)
t.BYTE_DEF.method("ToString", (), STRING, str)
t.BYTE_DEF.method("ToString", (P("format", STRING),), STRING, format_number)

D = t.DOUBLE_DEF
D.method("ToString", (), STRING, to_string)
D.method("ToString", (P("format", STRING),), STRING, format_number)
D.method("CompareTo", (P("value", DOUBLE),), INT, lambda a, b: (a > b) - (a < b))
D.method("Parse", (P("s", STRING),), DOUBLE, parse_double, static=True)
D.method("IsNaN", (P("d", DOUBLE),), BOOL, math.isnan, static=True)
D.method("IsInfinity", (P("d", DOUBLE),), BOOL, math.isinf, static=True)
D.prop("NaN", DOUBLE, lambda: math.nan, static=True)
D.prop("PositiveInfinity", DOUBLE, lambda: math.inf, static=True)
D.prop("NegativeInfinity", DOUBLE, lambda: -math.inf, static=True)
D.prop("MaxValue", DOUBLE, lambda: 1.7976931348623157e308, static=True)
D.prop("MinValue", DOUBLE, lambda: -1.7976931348623157e308, static=True)
D.prop("Epsilon", DOUBLE, lambda: 5e-324, static=True)


# -- Math ----------------------------------------------------------------------------------

MATH_DEF = TypeDef("Math", full_name="System.Math", static_only=True)


def _min(a: int | float, b: int | float) -> int | float:
    if a != a or b != b:
        return math.nan
    return a if a <= b else b


def _max(a: int | float, b: int | float) -> int | float:
    if a != a or b != b:
        return math.nan
    return a if a >= b else b


def _number_param(name: str) -> Param:
    return P(name, DOUBLE)


def _abs(minimum: int | None):
    def absolute(x: int | float) -> int | float:
        if x == minimum and type(x) is int:
            raise overflow("Negating the minimum value of a twos complement number is invalid.")
        return abs(x)
    return absolute


def _round(x: float, digits: int = 0) -> float:
    if not 0 <= digits <= 15:
        raise argument_out_of_range("digits", "Rounding digits must be between 0 and 15, "
                                    "inclusive.")
    if math.isnan(x) or math.isinf(x):
        return x
    return float(round(x, digits))


def _float_op(fn):
    def call(*args):
        try:
            return float(fn(*args))
        except (ValueError, OverflowError):
            return math.nan if not any(math.isinf(a) for a in args) else math.inf
    return call


def _pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan


M = MATH_DEF
for _type, _minimum in ((INT, INT_MIN), (LONG, LONG_MIN), (DOUBLE, None)):
    # The first applicable overload wins: the narrowest type.
    M.method("Min", (P("val1", _type), P("val2", _type)), _type, _min, static=True)
    M.method("Max", (P("val1", _type), P("val2", _type)), _type, _max, static=True)
    M.method("Abs", (P("value", _type),), _type, _abs(_minimum), static=True)
M.method("Floor", (_number_param("d"),), DOUBLE, _float_op(math.floor), static=True)
M.method("Ceiling", (_number_param("a"),), DOUBLE, _float_op(math.ceil), static=True)
M.method("Truncate", (_number_param("d"),), DOUBLE, _float_op(math.trunc), static=True)
M.method("Round", (_number_param("a"), P("digits", INT, optional=True, default=0)), DOUBLE,
         _round, static=True)
M.method("Pow", (_number_param("x"), _number_param("y")), DOUBLE, _pow, static=True)
M.method("Sqrt", (_number_param("d"),), DOUBLE, _sqrt, static=True)
M.method("Sign", (_number_param("value"),), INT,
         lambda x: (x > 0) - (x < 0) if x == x else _raise_nan_sign(), static=True)
M.prop("PI", DOUBLE, lambda: math.pi, static=True)
M.prop("E", DOUBLE, lambda: math.e, static=True)


def _raise_nan_sign() -> int:
    raise ExpressionRuntimeError("Function does not accept floating point Not-a-Number values.",
                                 "ArithmeticException")


# -- Convert -------------------------------------------------------------------------------

CONVERT_DEF = TypeDef("Convert", full_name="System.Convert", static_only=True)


def _to_base64(data: bytes | None) -> str:
    _need(data, "inArray")
    return base64.b64encode(bytes(data)).decode("ascii")  # type: ignore[arg-type]


def _from_base64(text: str | None) -> bytes:
    _need(text, "s")
    cleaned = "".join(text.split())  # type: ignore[union-attr]
    try:
        if len(cleaned) % 4:
            raise binascii.Error
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise format_error("The input is not a valid Base-64 string as it contains a non-base "
                           "64 character, more than two padding characters, or an illegal "
                           "character among the padding characters.") from None


def _convert_integer(value: object, low: int, high: int, name: str) -> int:
    if value is None:
        return 0
    vt = type(value)
    if vt is bool:
        return int(value)  # type: ignore[call-overload]
    if vt is int:
        if not low <= value <= high:  # type: ignore[operator]
            raise overflow(f"Value was either too large or too small for an {name}.")
        return value  # type: ignore[return-value]
    if vt is float:
        if math.isnan(value) or math.isinf(value):  # type: ignore[arg-type]
            raise overflow(f"Value was either too large or too small for an {name}.")
        rounded = round(value)  # type: ignore[call-overload]  # banker's rounding, as .NET
        if not low <= rounded <= high:
            raise overflow(f"Value was either too large or too small for an {name}.")
        return rounded
    if vt is str:
        return parse_integer(value, low, high, name)  # type: ignore[arg-type]
    if vt is v.Char:
        return ord(value)  # type: ignore[arg-type]
    if vt is v.EnumValue:
        return value.value  # type: ignore[attr-defined]
    raise v_invalid_cast(value, f"System.{name}")


def v_invalid_cast(value: object, target: str) -> ExpressionRuntimeError:
    """What Convert.ToX says about a value that is not convertible to ``target``."""
    return ExpressionRuntimeError(
        f"Unable to cast object of type '{v.runtime_type_name(value)}' to type "
        "'System.IConvertible'.", "InvalidCastException")


def _convert_double(value: object) -> float:
    if value is None:
        return 0.0
    vt = type(value)
    if vt in (int, bool, float):
        return float(value)  # type: ignore[arg-type]
    if vt is str:
        return parse_double(value)  # type: ignore[arg-type]
    raise v_invalid_cast(value, "System.Double")


def _convert_bool(value: object) -> bool:
    if value is None:
        return False
    vt = type(value)
    if vt is bool:
        return value  # type: ignore[return-value]
    if vt in (int, float):
        return value != 0
    if vt is str:
        return _parse_bool(value)  # type: ignore[arg-type]
    raise v_invalid_cast(value, "System.Boolean")


CV = CONVERT_DEF
CV.method("ToBase64String", (P("inArray", BYTE_ARRAY),), STRING, _to_base64, static=True)
CV.method("FromBase64String", (P("s", STRING),), BYTE_ARRAY, _from_base64, static=True)
CV.method("ToInt32", (P("value", OBJECT),), INT,
          lambda x: _convert_integer(x, INT_MIN, INT_MAX, "Int32"), static=True)
CV.method("ToInt64", (P("value", OBJECT),), LONG,
          lambda x: _convert_integer(x, LONG_MIN, LONG_MAX, "Int64"), static=True)
CV.method("ToDouble", (P("value", OBJECT),), DOUBLE, _convert_double, static=True)
CV.method("ToBoolean", (P("value", OBJECT),), BOOL, _convert_bool, static=True)
CV.method("ToString", (P("value", OBJECT),), STRING, to_string, static=True)


# -- Encoding ------------------------------------------------------------------------------


class Encoding:
    """``Encoding.UTF8`` / ``ASCII`` / ``Unicode``: text <-> ``byte[]``."""

    __slots__ = ("codec", "name")

    def __init__(self, codec: str, name: str) -> None:
        self.codec = codec
        self.name = name

    def get_bytes(self, text: str | None) -> bytes:
        _need(text, "s")
        return text.encode(self.codec, "replace")  # type: ignore[union-attr]

    def get_string(self, data: bytes | None) -> str:
        _need(data, "bytes")
        return bytes(data).decode(self.codec, "replace")  # type: ignore[arg-type]

    def cs_to_string(self) -> str:
        return f"System.Text.{self.name}"


ENCODING_DEF = TypeDef("Encoding", full_name="System.Text.Encoding", base=t.OBJECT_DEF,
                       python_types=(Encoding,))
ENCODING = TypeRef(ENCODING_DEF)
_ENCODINGS = {"UTF8": Encoding("utf-8", "UTF8Encoding"),
              "ASCII": Encoding("ascii", "ASCIIEncoding"),
              "Unicode": Encoding("utf-16-le", "UnicodeEncoding")}
for _name, _encoding in _ENCODINGS.items():
    ENCODING_DEF.prop(_name, ENCODING, (lambda e=_encoding: e), static=True)
ENCODING_DEF.method("GetBytes", (P("s", STRING),), BYTE_ARRAY, Encoding.get_bytes)
ENCODING_DEF.method("GetString", (P("bytes", BYTE_ARRAY),), STRING, Encoding.get_string)
v.RUNTIME_TYPES[Encoding] = ENCODING_DEF


# -- DateTime ------------------------------------------------------------------------------


def _utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def utc_now() -> v.DateTime:
    return v.DateTime(_utc(), v.UTC)


def _add(unit: str):
    def add(dt: v.DateTime, amount: float) -> v.DateTime:
        if amount != amount or math.isinf(amount):
            raise argument_out_of_range("value", "Value to add was out of range.")
        try:
            delta = timedelta(**{unit: amount})
        except OverflowError:
            raise argument_out_of_range("value", "Value to add was out of range.") from None
        return dt.add(delta)
    return add


def _add_months(dt: v.DateTime, months: int) -> v.DateTime:
    if not -120000 <= months <= 120000:
        raise argument_out_of_range("months", "Months value must be between +/-120000.")
    value = dt.value
    index = value.year * 12 + value.month - 1 + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise argument_out_of_range("months", "The added or subtracted value results in an "
                                    "un-representable DateTime.")
    month += 1
    days = calendar.monthrange(year, month)[1]
    return v.DateTime(value.replace(year=year, month=month, day=min(value.day, days)), dt.kind)


def _add_years(dt: v.DateTime, years: int) -> v.DateTime:
    if not -10000 <= years <= 10000:
        raise argument_out_of_range("years", "Years value must be between +/-10000.")
    return _add_months(dt, years * 12)


def _subtract(dt: v.DateTime, other: object) -> object:
    if isinstance(other, v.DateTime):
        return dt.value - other.value
    return dt.add(-other)  # type: ignore[operator]


def _datetime_compare(a: v.DateTime, b: v.DateTime) -> int:
    return (a.value > b.value) - (a.value < b.value)


def _day_of_week(dt: v.DateTime) -> v.EnumValue:
    names = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    return DAY_OF_WEEK_DEF.enum_values[names[dt.value.weekday()]]  # type: ignore[index]


def _from_ticks(ticks: int, kind: int = v.UNSPECIFIED) -> v.DateTime:
    if not 0 <= ticks <= v.MAX_DATETIME.ticks + 9:
        raise argument_out_of_range("ticks", "Ticks must be between DateTime.MinValue.Ticks "
                                    "and DateTime.MaxValue.Ticks.")
    return v.DateTime(datetime(1, 1, 1) + timedelta(microseconds=ticks // 10), kind)


def _new_datetime_kind(dt: v.DateTime, kind: int) -> v.DateTime:
    return v.DateTime(dt.value, kind)


DT = t.DATETIME_DEF
DT.prop("UtcNow", DATETIME, utc_now, static=True)
DT.prop("Now", DATETIME, lambda: v.DateTime(_utc(), v.LOCAL), static=True)
DT.prop("Today", DATETIME, lambda: v.DateTime(
    _utc().replace(hour=0, minute=0, second=0, microsecond=0), v.LOCAL), static=True)
DT.prop("MinValue", DATETIME, lambda: v.MIN_DATETIME, static=True)
DT.prop("MaxValue", DATETIME, lambda: v.MAX_DATETIME, static=True)
DT.method("Parse", (P("s", STRING),), DATETIME, parse_datetime, static=True)
DT.method("Compare", (P("t1", DATETIME), P("t2", DATETIME)), INT, _datetime_compare, static=True)
DT.method("SpecifyKind", (P("value", DATETIME), P("kind", DATETIME_KIND)), DATETIME,
          lambda dt, kind: _new_datetime_kind(dt, kind.value), static=True)
for _name, _attr in (("Year", "year"), ("Month", "month"), ("Day", "day"), ("Hour", "hour"),
                     ("Minute", "minute"), ("Second", "second")):
    DT.prop(_name, INT, (lambda dt, a=_attr: getattr(dt.value, a)))
DT.prop("Millisecond", INT, lambda dt: dt.value.microsecond // 1000)
DT.prop("DayOfYear", INT, lambda dt: dt.value.timetuple().tm_yday)
DT.prop("DayOfWeek", DAY_OF_WEEK, _day_of_week)
DT.prop("Kind", DATETIME_KIND,
        lambda dt: DATETIME_KIND_DEF.enum_values[v.KIND_NAMES[dt.kind]])  # type: ignore[index]
DT.prop("Date", DATETIME, lambda dt: v.DateTime(
    dt.value.replace(hour=0, minute=0, second=0, microsecond=0), dt.kind))
DT.prop("TimeOfDay", TIMESPAN, lambda dt: dt.value - dt.value.replace(
    hour=0, minute=0, second=0, microsecond=0))
DT.prop("Ticks", LONG, lambda dt: dt.ticks)
for _name, _unit in (("AddDays", "days"), ("AddHours", "hours"), ("AddMinutes", "minutes"),
                     ("AddSeconds", "seconds"), ("AddMilliseconds", "milliseconds")):
    DT.method(_name, (P("value", DOUBLE),), DATETIME, _add(_unit))
DT.method("AddMonths", (P("months", INT),), DATETIME, _add_months)
DT.method("AddYears", (P("value", INT),), DATETIME, _add_years)
DT.method("AddTicks", (P("value", LONG),), DATETIME,
          lambda dt, ticks: _add("microseconds")(dt, ticks / 10))
DT.method("Add", (P("value", TIMESPAN),), DATETIME, v.DateTime.add)
DT.method("Subtract", (P("value", DATETIME),), TIMESPAN, _subtract)
DT.method("Subtract", (P("value", TIMESPAN),), DATETIME, _subtract)
DT.method("CompareTo", (P("value", DATETIME),), INT, _datetime_compare)
DT.method("Equals", (P("value", DATETIME),), BOOL, v.cs_equals)
DT.method("ToUniversalTime", (), DATETIME, lambda dt: _new_datetime_kind(dt, v.UTC))
DT.method("ToLocalTime", (), DATETIME, lambda dt: _new_datetime_kind(dt, v.LOCAL))
DT.method("ToString", (), STRING, to_string)
DT.method("ToString", (P("format", STRING),), STRING, format_datetime)
DT.method("ToShortDateString", (), STRING, lambda dt: format_datetime(dt, "d"))
DT.method("ToLongDateString", (), STRING, lambda dt: format_datetime(dt, "D"))
DT.method("ToShortTimeString", (), STRING, lambda dt: format_datetime(dt, "t"))
DT.method("ToLongTimeString", (), STRING, lambda dt: format_datetime(dt, "T"))
DT.method("ToFileTimeUtc", (), LONG, lambda dt: dt.ticks - 504911232000000000)


# -- TimeSpan ------------------------------------------------------------------------------


def _span(unit: str):
    def make(amount: float) -> timedelta:
        if amount != amount:
            raise ExpressionRuntimeError("TimeSpan does not accept floating point "
                                         "Not-a-Number values.", "ArgumentException")
        try:
            return timedelta(**{unit: amount})
        except OverflowError:
            raise overflow("TimeSpan overflowed because the duration is too long.") from None
    return make


def _span_component(divisor: int, modulo: int):
    def component(span: timedelta) -> int:
        ticks = timespan_ticks(span)
        value = abs(ticks) // divisor
        if modulo:
            value %= modulo
        return -value if ticks < 0 else value
    return component


def _span_total(divisor: float):
    return lambda span: timespan_ticks(span) / divisor


def _span_arith(fn):
    def apply(a: timedelta, b: timedelta) -> timedelta:
        try:
            return fn(a, b)
        except OverflowError:
            raise overflow("TimeSpan overflowed because the duration is too long.") from None
    return apply


TS = t.TIMESPAN_DEF
for _name, _unit in (("FromDays", "days"), ("FromHours", "hours"), ("FromMinutes", "minutes"),
                     ("FromSeconds", "seconds"), ("FromMilliseconds", "milliseconds")):
    TS.method(_name, (P("value", DOUBLE),), TIMESPAN, _span(_unit), static=True)
TS.method("FromTicks", (P("value", LONG),), TIMESPAN,
          lambda ticks: _span("microseconds")(ticks / 10), static=True)
TS.method("Parse", (P("s", STRING),), TIMESPAN, parse_timespan, static=True)
TS.prop("Zero", TIMESPAN, lambda: timedelta(0), static=True)
TS.prop("MaxValue", TIMESPAN, lambda: timedelta.max, static=True)
TS.prop("MinValue", TIMESPAN, lambda: timedelta.min, static=True)
_TICKS_PER = {"ms": 10_000, "s": 10_000_000, "m": 600_000_000, "h": 36_000_000_000,
              "d": 864_000_000_000}
TS.prop("Days", INT, _span_component(_TICKS_PER["d"], 0))
TS.prop("Hours", INT, _span_component(_TICKS_PER["h"], 24))
TS.prop("Minutes", INT, _span_component(_TICKS_PER["m"], 60))
TS.prop("Seconds", INT, _span_component(_TICKS_PER["s"], 60))
TS.prop("Milliseconds", INT, _span_component(_TICKS_PER["ms"], 1000))
TS.prop("Ticks", LONG, timespan_ticks)
TS.prop("TotalDays", DOUBLE, _span_total(_TICKS_PER["d"]))
TS.prop("TotalHours", DOUBLE, _span_total(_TICKS_PER["h"]))
TS.prop("TotalMinutes", DOUBLE, _span_total(_TICKS_PER["m"]))
TS.prop("TotalSeconds", DOUBLE, _span_total(_TICKS_PER["s"]))
TS.prop("TotalMilliseconds", DOUBLE, _span_total(_TICKS_PER["ms"]))
TS.method("Add", (P("ts", TIMESPAN),), TIMESPAN, _span_arith(lambda a, b: a + b))
TS.method("Subtract", (P("ts", TIMESPAN),), TIMESPAN, _span_arith(lambda a, b: a - b))
TS.method("Negate", (), TIMESPAN, lambda a: _span_arith(lambda x, _: -x)(a, None))
TS.method("Duration", (), TIMESPAN, lambda a: _span_arith(lambda x, _: abs(x))(a, None))
TS.method("CompareTo", (P("value", TIMESPAN),), INT, lambda a, b: (a > b) - (a < b))
TS.method("Equals", (P("obj", TIMESPAN),), BOOL, v.cs_equals)
TS.method("ToString", (), STRING, to_string)
TS.method("ToString", (P("format", STRING),), STRING, format_timespan)


# -- Guid ----------------------------------------------------------------------------------


def _parse_guid(text: str | None) -> v.Guid:
    _need(text, "input")
    try:
        return v.Guid(str(uuid.UUID(text.strip())))  # type: ignore[union-attr]
    except ValueError:
        raise format_error("Unrecognized Guid format.") from None


G = t.GUID_DEF
G.method("NewGuid", (), GUID, lambda: v.Guid(str(uuid.uuid4())), static=True)
G.method("Parse", (P("input", STRING),), GUID, _parse_guid, static=True)
G.prop("Empty", GUID, lambda: v.EMPTY_GUID, static=True)
G.method("ToString", (), STRING, to_string)
G.method("ToString", (P("format", STRING),), STRING, format_guid)
G.method("Equals", (P("g", GUID),), BOOL, v.cs_equals)


# -- names ---------------------------------------------------------------------------------

#: Types by the names expressions may use (``using System; using System.Linq; ...``).
TYPE_NAMES: dict[str, TypeDef] = {
    "string": t.STRING_DEF, "String": t.STRING_DEF, "int": t.INT_DEF, "Int32": t.INT_DEF,
    "long": t.LONG_DEF, "Int64": t.LONG_DEF, "double": t.DOUBLE_DEF, "Double": t.DOUBLE_DEF,
    "bool": t.BOOL_DEF, "Boolean": t.BOOL_DEF, "object": t.OBJECT_DEF, "Object": t.OBJECT_DEF,
    "char": t.CHAR_DEF, "Char": t.CHAR_DEF, "byte": t.BYTE_DEF, "Byte": t.BYTE_DEF,
    "DateTime": t.DATETIME_DEF, "TimeSpan": t.TIMESPAN_DEF, "Guid": t.GUID_DEF,
    "Math": MATH_DEF, "Convert": CONVERT_DEF, "Encoding": ENCODING_DEF,
    "StringComparison": STRING_COMPARISON_DEF, "StringSplitOptions": SPLIT_OPTIONS_DEF,
    "X509NameType": X509_NAME_TYPE_DEF, "DayOfWeek": DAY_OF_WEEK_DEF,
    "DateTimeKind": DATETIME_KIND_DEF,
    "List": t.LIST_DEF, "IEnumerable": t.ENUMERABLE_DEF, "IList": t.LIST_DEF,
    "Dictionary": t.DICTIONARY_DEF, "IDictionary": t.DICTIONARY_DEF,
    "IReadOnlyDictionary": t.DICTIONARY_DEF, "KeyValuePair": t.KVP_DEF,
    "Nullable": t.NULLABLE_DEF,
}

#: Namespaces that may be written out, and the type names each one holds.
NAMESPACES: dict[str, set[str]] = {
    "System": {"String", "Int32", "Int64", "Double", "Boolean", "Object", "Char", "Byte",
               "DateTime", "TimeSpan", "Guid", "Math", "Convert", "StringComparison",
               "StringSplitOptions", "DayOfWeek", "DateTimeKind", "Nullable"},
    "System.Text": {"Encoding"},
    "System.Linq": set(),
    "System.Collections": set(),
    "System.Collections.Generic": {"List", "IEnumerable", "IList", "Dictionary", "IDictionary",
                                   "IReadOnlyDictionary", "KeyValuePair"},
    "System.Security": set(),
    "System.Security.Cryptography": set(),
    "System.Security.Cryptography.X509Certificates": {"X509NameType"},
}

#: Types that are written with predefined keywords in messages.
KEYWORD_ALIASES = {"String": "string", "Int32": "int", "Int64": "long", "Double": "double",
                   "Boolean": "bool", "Object": "object", "Char": "char", "Byte": "byte"}


def register_type(name: str, typedef: TypeDef, namespace: str | None = None) -> None:
    """Make a type usable by name (the object model registers X509Certificate2)."""
    TYPE_NAMES[name] = typedef
    if namespace is not None:
        NAMESPACES.setdefault(namespace, set()).add(name)


# Import for its side effect: registers collection members and LINQ.
from . import linq  # noqa: E402,F401
