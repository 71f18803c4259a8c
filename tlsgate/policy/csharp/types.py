"""Static types and the member registry: the only way an expression reaches a value's members.

A :class:`TypeDef` is a C# type as policies see it (``string``, ``IRequest``,
``IEnumerable<T>``), with explicit tables of instance members, static members and an optional
indexer. A :class:`TypeRef` is a use of it with type arguments (``IEnumerable<string>``). The
compiler resolves every member access against these tables at compile time, so ``__class__``,
``GetType()`` or any Python attribute that is not registered simply does not exist: there is no
``getattr`` on user-supplied names anywhere.

Members:

:class:`Property`
    ``get(obj)`` (instance) or ``get()`` (static) returns the value.
:class:`Method`
    ``impl(obj, *args)`` (instance) or ``impl(*args)`` (static). Parameters are
    :class:`Param` records; a parameter that takes a lambda has ``lambda_params``. ``returns`` and
    parameter types may be functions of the call :class:`Site` (for generics such as
    ``First()`` returning the element type). ``bind(site)`` may return an implementation
    specialised with what is known statically (``FirstOrDefault`` needs ``default(T)``).
:class:`Indexer`
    ``impl(obj, key)``.

``reads`` on a member names a request input that must be fetched before evaluation
(``"certificate"``, ``"body"``); the compiler collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union


class MemberUseError(Exception):
    """Raised by a member's type functions when the member cannot be used this way; the
    compiler reports the message at the member's position."""


class TypeDef:
    """A C# type: name, members, and how values of it look at run time."""

    __slots__ = ("name", "full_name", "arity", "value_type", "base", "members", "statics",
                 "indexer", "element", "display", "static_only", "enum_values", "python_types",
                 "is_instance")

    def __init__(self, name: str, *, full_name: str | None = None, arity: int = 0,
                 value_type: bool = False, base: TypeDef | None = None,
                 element: Callable[[TypeRef], TypeRef | None] | None = None,
                 display: Callable[[TypeRef], str] | None = None, static_only: bool = False,
                 python_types: tuple[type, ...] = ()) -> None:
        self.name = name
        self.full_name = full_name or name
        self.arity = arity
        self.value_type = value_type
        self.base = base
        self.members: dict[str, Property | list[Method]] = {}
        self.statics: dict[str, Property | list[Method]] = {}
        self.indexer: Indexer | None = None
        self.element = element
        self.display = display
        self.static_only = static_only
        self.enum_values: dict[str, Any] | None = None
        self.python_types = python_types
        #: Run-time test for ``is`` / ``as`` / casts; by default the Python types.
        self.is_instance: Callable[[object], bool] = (
            (lambda value: type(value) in python_types) if python_types else (lambda value: False))

    def __repr__(self) -> str:
        return f"<TypeDef {self.name}>"

    def find(self, name: str) -> Property | list[Method] | None:
        typedef: TypeDef | None = self
        while typedef is not None:
            member = typedef.members.get(name)
            if member is not None:
                return member
            typedef = typedef.base
        return None

    # Registration helpers, used by runtime.py, linq.py and model.py.

    def prop(self, name: str, type_: TypeLike, get: Callable, *, static: bool = False,
             reads: str | None = None, non_null: bool = False, view: bool = False,
             through: Callable | None = None) -> None:
        """``non_null``: the getter never returns null (``context.Request``), so members
        read through it need no null check. ``view`` and ``through``: see :class:`Property`."""
        table = self.statics if static else self.members
        table[name] = Property(name, type_, get, reads, non_null, view, through)

    def method(self, name: str, params: tuple[Param, ...] | list[Param], returns: TypeLike,
               impl: Callable, *, static: bool = False, generic: int = 0,
               bind: Callable[[Site], Callable] | None = None, extension: bool = False,
               reads: str | None = None) -> None:
        table = self.statics if static else self.members
        existing = table.setdefault(name, [])
        assert isinstance(existing, list), name
        existing.append(Method(name, tuple(params), returns, impl, generic, bind, extension,
                               reads))


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A type as used: a definition plus type arguments."""

    d: TypeDef
    args: tuple[TypeRef, ...] = ()

    def __str__(self) -> str:
        if self.d.display is not None:
            return self.d.display(self)
        if self.args:
            return f"{self.d.name}<{', '.join(str(a) for a in self.args)}>"
        return self.d.name

    @property
    def arg(self) -> TypeRef:
        return self.args[0]


TypeLike = Union[TypeRef, Callable[["Site"], "TypeRef | None"], None]  # noqa: UP007 (runtime alias)


@dataclass(slots=True)
class Property:
    name: str
    type: TypeLike
    get: Callable
    reads: str | None = None
    non_null: bool = False
    #: The getter makes a view of its receiver (``context.Request`` over the context): the
    #: view's ``through`` members are then read from the receiver and the view is not made.
    view: bool = False
    #: On a view's type: this member read from the object the view wraps (``Certificate``:
    #: ``context.certificate``), the same value as ``get`` on the view.
    through: Callable | None = None


@dataclass(slots=True)
class Param:
    name: str
    type: TypeLike = None               # None: any type
    optional: bool = False
    default: object = None
    #: This parameter takes a lambda: (site, lambda parameter count) -> parameter types,
    #: or None when that many lambda parameters is not allowed.
    lambda_params: Callable[[Site, int], list[TypeRef] | None] | None = None
    lambda_returns: TypeLike = None     # required lambda body type (None: any)
    variadic: bool = False              # C# ``params T[]``: the rest of the arguments


@dataclass(slots=True)
class Method:
    name: str
    params: tuple[Param, ...]
    returns: TypeLike
    impl: Callable
    generic: int = 0                    # type arguments that may be written explicitly
    bind: Callable[[Site], Callable] | None = None
    extension: bool = False             # null receiver: ArgumentNullException, not NullRef
    reads: str | None = None


@dataclass(slots=True)
class Indexer:
    key: TypeLike
    result: TypeLike
    impl: Callable


@dataclass(slots=True)
class Site:
    """What the compiler knows about a call: used by generic parameter and return types."""

    receiver: TypeRef | None
    type_args: list[TypeRef] = field(default_factory=list)
    args: list[TypeRef | None] = field(default_factory=list)        # by parameter index
    lambda_results: dict[int, TypeRef | None] = field(default_factory=dict)
    lambda_arity: dict[int, int] = field(default_factory=dict)             # by parameter index

    @property
    def elem(self) -> TypeRef:
        element = element_type(self.receiver) if self.receiver is not None else None
        return element or OBJECT

    def lambda_result(self, index: int) -> TypeRef:
        return self.lambda_results.get(index) or OBJECT


def resolve(type_: TypeLike, site: Site) -> TypeRef | None:
    if type_ is None or isinstance(type_, TypeRef):
        return type_
    return type_(site)


# -- the built-in type definitions ---------------------------------------------------------
# Members are registered by runtime.py and linq.py; the model adds its own types.


def _array_display(t: TypeRef) -> str:
    return f"{t.arg}[]"


def _nullable_display(t: TypeRef) -> str:
    return f"{t.arg}?"


OBJECT_DEF = TypeDef("object", full_name="System.Object")
STRING_DEF = TypeDef("string", full_name="System.String", base=OBJECT_DEF)
CHAR_DEF = TypeDef("char", full_name="System.Char", value_type=True, base=OBJECT_DEF)
BOOL_DEF = TypeDef("bool", full_name="System.Boolean", value_type=True, base=OBJECT_DEF)
INT_DEF = TypeDef("int", full_name="System.Int32", value_type=True, base=OBJECT_DEF)
LONG_DEF = TypeDef("long", full_name="System.Int64", value_type=True, base=OBJECT_DEF)
DOUBLE_DEF = TypeDef("double", full_name="System.Double", value_type=True, base=OBJECT_DEF)
BYTE_DEF = TypeDef("byte", full_name="System.Byte", value_type=True, base=OBJECT_DEF)
DATETIME_DEF = TypeDef("DateTime", full_name="System.DateTime", value_type=True, base=OBJECT_DEF)
TIMESPAN_DEF = TypeDef("TimeSpan", full_name="System.TimeSpan", value_type=True, base=OBJECT_DEF)
GUID_DEF = TypeDef("Guid", full_name="System.Guid", value_type=True, base=OBJECT_DEF)
NULL_DEF = TypeDef("<null>")
NULLABLE_DEF = TypeDef("Nullable", full_name="System.Nullable`1", arity=1, value_type=True,
                       display=_nullable_display)
ARRAY_DEF = TypeDef("Array", full_name="System.Array", arity=1, base=OBJECT_DEF,
                    element=lambda t: t.arg, display=_array_display)
LIST_DEF = TypeDef("List", full_name="System.Collections.Generic.List`1", arity=1,
                   base=OBJECT_DEF, element=lambda t: t.arg)
ENUMERABLE_DEF = TypeDef("IEnumerable", full_name="System.Collections.Generic.IEnumerable`1",
                         arity=1, base=OBJECT_DEF, element=lambda t: t.arg)
KVP_DEF = TypeDef("KeyValuePair", full_name="System.Collections.Generic.KeyValuePair`2",
                  arity=2, value_type=True, base=OBJECT_DEF)
DICTIONARY_DEF = TypeDef("IReadOnlyDictionary",
                         full_name="System.Collections.Generic.IReadOnlyDictionary`2", arity=2,
                         base=OBJECT_DEF, element=lambda t: TypeRef(KVP_DEF, t.args))

OBJECT = TypeRef(OBJECT_DEF)
STRING = TypeRef(STRING_DEF)
CHAR = TypeRef(CHAR_DEF)
BOOL = TypeRef(BOOL_DEF)
INT = TypeRef(INT_DEF)
LONG = TypeRef(LONG_DEF)
DOUBLE = TypeRef(DOUBLE_DEF)
BYTE = TypeRef(BYTE_DEF)
DATETIME = TypeRef(DATETIME_DEF)
TIMESPAN = TypeRef(TIMESPAN_DEF)
GUID = TypeRef(GUID_DEF)
NULL = TypeRef(NULL_DEF)

STRING_DEF.element = lambda t: CHAR


def array_of(t: TypeRef) -> TypeRef:
    return TypeRef(ARRAY_DEF, (t,))


def list_of(t: TypeRef) -> TypeRef:
    return TypeRef(LIST_DEF, (t,))


def enumerable_of(t: TypeRef) -> TypeRef:
    return TypeRef(ENUMERABLE_DEF, (t,))


def dictionary_of(key: TypeRef, value: TypeRef) -> TypeRef:
    return TypeRef(DICTIONARY_DEF, (key, value))


def nullable(t: TypeRef) -> TypeRef:
    """``T?`` for a value type T; reference types (and ``T?`` itself) are unchanged."""
    if t.d.value_type and t.d is not NULLABLE_DEF:
        return TypeRef(NULLABLE_DEF, (t,))
    return t


def underlying(t: TypeRef) -> TypeRef:
    """T for ``T?``, else the type itself."""
    return t.arg if t.d is NULLABLE_DEF else t


def is_nullable(t: TypeRef) -> bool:
    return t.d is NULLABLE_DEF


def is_reference(t: TypeRef) -> bool:
    return not t.d.value_type


def can_be_null(t: TypeRef) -> bool:
    return not t.d.value_type or t.d is NULLABLE_DEF


def element_type(t: TypeRef) -> TypeRef | None:
    return t.d.element(t) if t.d.element is not None else None


_NUMERIC_RANK = {BYTE_DEF: 0, CHAR_DEF: 0, INT_DEF: 1, LONG_DEF: 2, DOUBLE_DEF: 3}
NUMERIC_DEFS = frozenset(_NUMERIC_RANK)


def is_numeric(t: TypeRef) -> bool:
    return t.d in _NUMERIC_RANK


def promote(a: TypeRef, b: TypeRef) -> TypeRef:
    """The type of ``a + b`` for numeric a and b (char and byte become int)."""
    rank = max(_NUMERIC_RANK[a.d], _NUMERIC_RANK[b.d], 1)
    return (INT, INT, LONG, DOUBLE)[rank]


def assignable(source: TypeRef, target: TypeRef) -> bool:
    """Whether C# converts ``source`` to ``target`` implicitly (as far as policies need)."""
    if source == target or target.d is OBJECT_DEF:
        return True
    if source.d is NULL_DEF:
        return can_be_null(target)
    if target.d is NULLABLE_DEF:
        return assignable(underlying(source), target.arg)
    if source.d is NULLABLE_DEF:
        return False
    if source.d in _NUMERIC_RANK and target.d in _NUMERIC_RANK:
        if target.d in (CHAR_DEF, BYTE_DEF):
            return source.d is target.d
        return _NUMERIC_RANK[source.d] <= _NUMERIC_RANK[target.d] or \
            (source.d is CHAR_DEF and target.d is not BYTE_DEF)
    if target.d is ENUMERABLE_DEF:
        element = element_type(source)
        return element is not None and (element == target.arg or (
            is_reference(element) and assignable(element, target.arg)))
    if source.d.base is not None and source.d.base is not OBJECT_DEF:
        return assignable(TypeRef(source.d.base, source.args), target)
    return False


#: LINQ extension methods, by name: they apply to every type with an element type.
EXTENSIONS: dict[str, list[Method]] = {}


def find_property(type_: TypeRef, name: str) -> Property | None:
    member = type_.d.find(name)
    return member if isinstance(member, Property) else None


def find_methods(type_: TypeRef, name: str) -> list[Method]:
    """Instance methods named ``name``, else the LINQ extension methods if the type is
    enumerable (C# looks at extension methods only when no instance method applies)."""
    member = type_.d.find(name)
    methods = list(member) if isinstance(member, list) else []
    if element_type(type_) is not None:
        methods += EXTENSIONS.get(name, [])
    return methods


def find_static(typedef: TypeDef, name: str) -> Property | list[Method] | None:
    return typedef.statics.get(name)
