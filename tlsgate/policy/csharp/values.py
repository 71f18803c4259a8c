"""Run-time representation of C# values.

==================  ===================================================================
C#                  Python
==================  ===================================================================
null                ``None``
string              ``str``
char                :class:`Char` (a one-character ``str`` subclass)
bool                ``bool``
int, long, byte     ``int`` (int and long arithmetic wraps at 32/64 bits, decided statically)
double              ``float``
DateTime            :class:`DateTime` (naive ``datetime`` + kind)
TimeSpan            ``datetime.timedelta``
Guid                :class:`Guid`
enums               :class:`EnumValue`
T[], List<T>,
IEnumerable<T>      ``list`` (LINQ is evaluated eagerly); ``byte[]`` is ``bytes``
dictionaries        :class:`CsDictionary` and subclasses
KeyValuePair        :class:`KeyValuePair`
==================  ===================================================================

The gateway's "local" time zone is UTC, as on API Management's own servers: ``DateTime.Now``
equals ``DateTime.UtcNow`` (with kind Local), so policies behave the same wherever tlsgate runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta

from . import types as t
from .errors import ExpressionRuntimeError, argument_null, argument_out_of_range

UNSPECIFIED, UTC, LOCAL = 0, 1, 2
KIND_NAMES = ("Unspecified", "Utc", "Local")
_EPOCH = datetime(1, 1, 1)


class Char(str):
    """A C# ``char``: a one-character string that knows it is a char."""

    __slots__ = ()


class DateTime:
    """A C# ``DateTime``: ``value`` is a naive ``datetime``, ``kind`` UNSPECIFIED/UTC/LOCAL.

    Comparison and subtraction ignore the kind, as in .NET.
    """

    __slots__ = ("value", "kind")

    def __init__(self, value: datetime, kind: int = UNSPECIFIED) -> None:
        self.value = value
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DateTime) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __lt__(self, other: DateTime) -> bool:
        return self.value < other.value

    def __le__(self, other: DateTime) -> bool:
        return self.value <= other.value

    def __gt__(self, other: DateTime) -> bool:
        return self.value > other.value

    def __ge__(self, other: DateTime) -> bool:
        return self.value >= other.value

    def add(self, delta: timedelta) -> DateTime:
        try:
            return DateTime(self.value + delta, self.kind)
        except OverflowError:
            raise argument_out_of_range(
                "value", "The added or subtracted value results in an un-representable "
                "DateTime.") from None

    def __repr__(self) -> str:
        return f"DateTime({self.value.isoformat()}, {KIND_NAMES[self.kind]})"

    @property
    def ticks(self) -> int:
        return (self.value - _EPOCH) // timedelta(microseconds=1) * 10


MIN_DATETIME = DateTime(datetime.min)
MAX_DATETIME = DateTime(datetime.max)


class Guid:
    """A C# ``Guid``. ``text`` is its canonical lowercase "D" form, or the request id that
    ``context.RequestId`` carries (tlsgate's ids are not GUIDs; ToString() gives them as is)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Guid) and self.text.lower() == other.text.lower()

    def __hash__(self) -> int:
        return hash(self.text.lower())

    def __repr__(self) -> str:
        return f"Guid({self.text})"


EMPTY_GUID = Guid("00000000-0000-0000-0000-000000000000")


class EnumValue:
    """A member of a C# enum (``StringComparison.OrdinalIgnoreCase``)."""

    __slots__ = ("typedef", "name", "value")

    def __init__(self, typedef: t.TypeDef, name: str, value: int) -> None:
        self.typedef = typedef
        self.name = name
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and other.typedef is self.typedef and \
            other.value == self.value

    def __hash__(self) -> int:
        return hash((self.typedef.name, self.value))

    def __lt__(self, other: EnumValue) -> bool:
        return self.value < other.value

    def __le__(self, other: EnumValue) -> bool:
        return self.value <= other.value

    def __gt__(self, other: EnumValue) -> bool:
        return self.value > other.value

    def __ge__(self, other: EnumValue) -> bool:
        return self.value >= other.value

    def __repr__(self) -> str:
        return f"{self.typedef.name}.{self.name}"


def define_enum(name: str, full_name: str, members: Iterable[str] | Mapping[str, int]) -> t.TypeDef:
    """A TypeDef whose static members are the enum's values."""
    typedef = t.TypeDef(name, full_name=full_name, value_type=True, base=t.OBJECT_DEF,
                        python_types=(EnumValue,))
    typedef.is_instance = lambda value: isinstance(value, EnumValue) and value.typedef is typedef
    pairs = members.items() if isinstance(members, Mapping) else \
        ((member, index) for index, member in enumerate(members))
    typedef.enum_values = {}
    ref = t.TypeRef(typedef)
    for member, number in pairs:
        value = EnumValue(typedef, member, number)
        typedef.enum_values[member] = value
        typedef.prop(member, ref, (lambda v=value: v), static=True)
    return typedef


class KeyValuePair:
    __slots__ = ("key", "value")

    def __init__(self, key: object, value: object) -> None:
        self.key = key
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyValuePair) and cs_equals(self.key, other.key) and \
            cs_equals(self.value, other.value)

    def __hash__(self) -> int:
        return hash(self.key) if isinstance(self.key, (str, int)) else 0

    def __repr__(self) -> str:
        return f"[{self.key}, {self.value}]"


class CsDictionary:
    """A read-only dictionary view over a Python ``dict`` (not copied: the owner may keep
    changing it, as the policy engine does with ``context.Variables``)."""

    __slots__ = ("_data",)

    def __init__(self, data: dict | None = None) -> None:
        self._data = {} if data is None else data

    def get(self, key: object) -> object:
        """The value for ``key``; KeyNotFoundException when it is missing."""
        if key is None:
            raise argument_null("key")
        try:
            return self._data[key]
        except KeyError:
            raise key_not_found(key) from None
        except TypeError:  # unhashable key: cannot be present
            raise key_not_found(key) from None

    def lookup(self, key: object, default: object = None) -> object:
        if key is None:
            raise argument_null("key")
        try:
            return self._data.get(key, default)
        except TypeError:
            return default

    def contains(self, key: object) -> bool:
        if key is None:
            raise argument_null("key")
        try:
            return key in self._data
        except TypeError:
            return False

    def keys(self) -> list:
        return list(self._data)

    def values(self) -> list:
        return list(self._data.values())

    def pairs(self) -> list[KeyValuePair]:
        return [KeyValuePair(k, v) for k, v in self._data.items()]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[KeyValuePair]:
        return iter(self.pairs())


class CaseInsensitiveDictionary(CsDictionary):
    """String keys compared with OrdinalIgnoreCase; the first spelling of a key is kept.

    ``data`` maps folded keys (:func:`fold`) to ``(key, value)``.
    """

    __slots__ = ()

    def __init__(self, items: Iterable[tuple[str, object]] = ()) -> None:
        super().__init__({})
        for key, value in items:
            self._data.setdefault(fold(key), (key, value))

    def get(self, key: object) -> object:
        if key is None:
            raise argument_null("key")
        entry = self._data.get(fold(key)) if isinstance(key, str) else None
        if entry is None:
            raise key_not_found(key)
        return entry[1]

    def lookup(self, key: object, default: object = None) -> object:
        if key is None:
            raise argument_null("key")
        entry = self._data.get(fold(key)) if isinstance(key, str) else None
        return default if entry is None else entry[1]

    def contains(self, key: object) -> bool:
        if key is None:
            raise argument_null("key")
        return isinstance(key, str) and fold(key) in self._data

    def keys(self) -> list:
        return [key for key, _ in self._data.values()]

    def values(self) -> list:
        return [value for _, value in self._data.values()]

    def pairs(self) -> list[KeyValuePair]:
        return [KeyValuePair(key, value) for key, value in self._data.values()]


class MultiValueDictionary(CaseInsensitiveDictionary):
    """Headers and query parameters: name -> ``string[]`` (a list), names case-insensitive.

    Built from ``(name, value)`` pairs in order; repeated names collect their values.
    """

    __slots__ = ()

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        CsDictionary.__init__(self, {})
        data = self._data
        for key, value in items:
            folded = fold(key)
            entry = data.get(folded)
            if entry is None:
                data[folded] = (key, [value])
            else:
                entry[1].append(value)

    def joined(self, key: object, default: object = None) -> object:
        """APIM's ``GetValueOrDefault(name, default)``: the values joined with ``,``."""
        if key is None:
            raise argument_null("key")
        entry = self._data.get(fold(key)) if isinstance(key, str) else None
        return default if entry is None else ",".join(entry[1])


def fold(text: str) -> str:
    """The OrdinalIgnoreCase key of a string (one-to-one case mapping, like .NET)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)


def key_not_found(key: object) -> ExpressionRuntimeError:
    from .formatting import to_string

    return ExpressionRuntimeError(f"The given key '{to_string(key)}' was not present in the "
                                  "dictionary.", "KeyNotFoundException")


# -- equality, defaults, run-time types ----------------------------------------------------

_VALUE_EQUALITY = frozenset({str, Char, int, float, DateTime, timedelta, Guid, EnumValue,
                             KeyValuePair})


def cs_equals(a: object, b: object) -> bool:
    """``object.Equals(a, b)``: value equality for strings and value types, reference
    equality for everything else."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in _VALUE_EQUALITY and tb in _VALUE_EQUALITY:
        if (ta is Char) != (tb is Char) and (ta is str or tb is str):
            return False  # a char never equals a string
        return a == b
    equals = getattr(ta, "cs_equals", None)  # model classes with value semantics
    if equals is not None:
        return bool(equals(a, b))
    return False


def default_of(type_: t.TypeRef) -> object:
    """``default(T)``: null for reference and nullable types, zero values otherwise."""
    d = type_.d
    if not d.value_type or d is t.NULLABLE_DEF:
        return None
    if d in (t.INT_DEF, t.LONG_DEF, t.BYTE_DEF):
        return 0
    if d is t.DOUBLE_DEF:
        return 0.0
    if d is t.BOOL_DEF:
        return False
    if d is t.CHAR_DEF:
        return Char("\0")
    if d is t.DATETIME_DEF:
        return MIN_DATETIME
    if d is t.TIMESPAN_DEF:
        return timedelta(0)
    if d is t.GUID_DEF:
        return EMPTY_GUID
    if d is t.KVP_DEF:
        return KeyValuePair(default_of(type_.args[0]), default_of(type_.args[1]))
    if d.enum_values:
        for value in d.enum_values.values():
            if value.value == 0:
                return value
        return EnumValue(d, "0", 0)
    return None


#: Python type -> TypeDef, for messages and ``object`` members; the model registers its
#: classes here too.
RUNTIME_TYPES: dict[type, t.TypeDef] = {
    str: t.STRING_DEF, Char: t.CHAR_DEF, bool: t.BOOL_DEF, int: t.INT_DEF,
    float: t.DOUBLE_DEF, DateTime: t.DATETIME_DEF, timedelta: t.TIMESPAN_DEF,
    Guid: t.GUID_DEF, KeyValuePair: t.KVP_DEF,
}


def runtime_type_name(value: object) -> str:
    """The .NET full name of a value's type, as exception messages show it."""
    if isinstance(value, EnumValue):
        return value.typedef.full_name
    if isinstance(value, (list, tuple)):
        return "System.Object[]"
    if isinstance(value, bytes):
        return "System.Byte[]"
    if isinstance(value, CsDictionary):
        return "System.Collections.Generic.Dictionary`2"
    typedef = RUNTIME_TYPES.get(type(value))
    if typedef is not None:
        return typedef.full_name
    return "System.Object"


def is_instance(value: object, type_: t.TypeRef) -> bool:
    """The run-time test behind ``is T``, ``as T`` and reference casts."""
    if value is None:
        return False
    d = type_.d
    if d is t.OBJECT_DEF:
        return True
    if d is t.NULLABLE_DEF:
        return is_instance(value, type_.arg)
    vt = type(value)
    if d is t.STRING_DEF:
        return vt is str
    if d in (t.INT_DEF, t.LONG_DEF):
        return vt is int
    if d is t.DOUBLE_DEF:
        return vt is float
    if d is t.BOOL_DEF:
        return vt is bool
    if d is t.CHAR_DEF:
        return vt is Char
    if d is t.ARRAY_DEF:
        if type_.arg.d is t.BYTE_DEF:
            return vt is bytes
        return vt is list
    if d in (t.LIST_DEF, t.ENUMERABLE_DEF):
        return vt in (list, bytes, str) if d is t.ENUMERABLE_DEF else vt is list
    if d is t.DICTIONARY_DEF or (d.base is t.DICTIONARY_DEF):
        return isinstance(value, CsDictionary)
    return RUNTIME_TYPES.get(vt) is d or d.is_instance(value)


def iterate(value: object) -> Iterable:
    """The elements of an enumerable value (strings give chars, dictionaries pairs)."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [Char(ch) for ch in value]
    if isinstance(value, CsDictionary):
        return value.pairs()
    if isinstance(value, bytes):
        return list(value)
    if value is None:
        raise argument_null("source")
    raise ExpressionRuntimeError(f"'{runtime_type_name(value)}' is not enumerable",
                                 "InvalidOperationException")
