"""Collections and LINQ.

Arrays (``T[]``), ``List<T>`` and ``IEnumerable<T>`` are Python lists at run time, and LINQ
operators run eagerly: ``Where`` returns a list at once. Policies have no side effects that
could tell the difference, and eager lists keep lambdas from outliving their evaluation.

Dictionaries are :class:`~.values.CsDictionary`; enumerating one gives
:class:`~.values.KeyValuePair` objects with ``Key`` and ``Value``.

Lambdas arrive as Python callables made by the compiler; predicates return ``bool`` (checked at
compile time).
"""

from __future__ import annotations

from datetime import timedelta

from . import types as t
from . import values as v
from .errors import ExpressionRuntimeError, argument_null, argument_out_of_range, index_out_of_range
from .formatting import to_string
from .types import BOOL, DOUBLE, INT, OBJECT, STRING, Param, Site, TypeRef

iterate = v.iterate


def _no_elements() -> ExpressionRuntimeError:
    return ExpressionRuntimeError("Sequence contains no elements", "InvalidOperationException")


def _no_match() -> ExpressionRuntimeError:
    return ExpressionRuntimeError("Sequence contains no matching element",
                                  "InvalidOperationException")


def _more_than_one(match: bool) -> ExpressionRuntimeError:
    return ExpressionRuntimeError("Sequence contains more than one matching element" if match
                                  else "Sequence contains more than one element",
                                  "InvalidOperationException")


# -- parameter and return types ------------------------------------------------------------


def _one(site: Site, count: int) -> list[TypeRef] | None:
    return [site.elem] if count == 1 else None


def _one_or_indexed(site: Site, count: int) -> list[TypeRef] | None:
    if count == 1:
        return [site.elem]
    if count == 2:
        return [site.elem, INT]
    return None


def PRED(indexed: bool = False) -> Param:
    return Param("predicate", lambda_params=_one_or_indexed if indexed else _one,
                 lambda_returns=BOOL)


def SEL(indexed: bool = False) -> Param:
    return Param("selector", lambda_params=_one_or_indexed if indexed else _one)


def _elem(site: Site) -> TypeRef:
    return site.elem


def _same_sequence(site: Site) -> TypeRef:
    return t.enumerable_of(site.elem)


def _selected(site: Site) -> TypeRef:
    return t.enumerable_of(site.lambda_result(0))


def _selected_many(site: Site) -> TypeRef:
    inner = t.element_type(site.lambda_result(0))
    return t.enumerable_of(inner or OBJECT)


def _sum_type(site: Site) -> TypeRef | None:
    """int, long or double (or their nullables); None: Sum does not apply."""
    element = site.lambda_result(0) if site.lambda_results else site.elem
    base = t.underlying(element)
    if base.d in (t.INT_DEF, t.LONG_DEF, t.DOUBLE_DEF):
        return element
    return None


def _average_type(site: Site) -> TypeRef | None:
    return DOUBLE if _sum_type(site) is not None else None


def _minmax_type(site: Site) -> TypeRef:
    return site.lambda_result(0) if site.lambda_results else site.elem


def _elem_param(site: Site) -> TypeRef:
    return site.elem


def _other_sequence(site: Site) -> TypeRef:
    return t.enumerable_of(site.elem)


def _type_arg_sequence(site: Site) -> TypeRef:
    return t.enumerable_of(site.type_args[0] if site.type_args else OBJECT)


def _dictionary_type(site: Site) -> TypeRef:
    key = site.lambda_result(0)
    value = site.lambda_result(1) if 1 in site.lambda_results else site.elem
    return t.dictionary_of(key, value)


# -- implementations -----------------------------------------------------------------------


def _any(source: object, predicate=None) -> bool:
    items = iterate(source)
    if predicate is None:
        return bool(items)
    for item in items:
        if predicate(item):
            return True
    return False


def _all(source: object, predicate) -> bool:
    for item in iterate(source):
        if not predicate(item):
            return False
    return True


def _count(source: object, predicate=None) -> int:
    items = iterate(source)
    if predicate is None:
        return len(items)  # type: ignore[arg-type]
    return sum(1 for item in items if predicate(item))


def _where(source: object, predicate) -> list:
    return [item for item in iterate(source) if predicate(item)]


def _where_indexed(source: object, predicate) -> list:
    return [item for index, item in enumerate(iterate(source)) if predicate(item, index)]


def _select(source: object, selector) -> list:
    return [selector(item) for item in iterate(source)]


def _select_indexed(source: object, selector) -> list:
    return [selector(item, index) for index, item in enumerate(iterate(source))]


def _indexed(plain, indexed):
    """``bind``: the (item, index) form when the lambda takes two parameters."""
    return lambda site: indexed if site.lambda_arity.get(0) == 2 else plain


def _select_many(source: object, selector) -> list:
    out: list = []
    for item in iterate(source):
        out.extend(iterate(selector(item)))
    return out


def _first(source: object, predicate=None) -> object:
    for item in iterate(source):
        if predicate is None or predicate(item):
            return item
    raise _no_elements() if predicate is None else _no_match()


def _first_or_default(default: object):
    def first_or_default(source: object, predicate=None) -> object:
        for item in iterate(source):
            if predicate is None or predicate(item):
                return item
        return default
    return first_or_default


def _last(source: object, predicate=None) -> object:
    for item in reversed(list(iterate(source))):
        if predicate is None or predicate(item):
            return item
    raise _no_elements() if predicate is None else _no_match()


def _last_or_default(default: object):
    def last_or_default(source: object, predicate=None) -> object:
        for item in reversed(list(iterate(source))):
            if predicate is None or predicate(item):
                return item
        return default
    return last_or_default


def _single_impl(source: object, predicate, default: object, has_default: bool) -> object:
    found = [item for item in iterate(source) if predicate is None or predicate(item)]
    if len(found) == 1:
        return found[0]
    if found:
        raise _more_than_one(predicate is not None)
    if has_default:
        return default
    raise _no_elements() if predicate is None else _no_match()


def _single(source: object, predicate=None) -> object:
    return _single_impl(source, predicate, None, False)


def _single_or_default(default: object):
    return lambda source, predicate=None: _single_impl(source, predicate, default, True)


def _element_at(source: object, index: int) -> object:
    items = list(iterate(source))
    if 0 <= index < len(items):
        return items[index]
    raise argument_out_of_range("index", "Index was out of range. Must be non-negative and "
                                "less than the size of the collection.")


def _contains(source: object, value: object) -> bool:
    return any(v.cs_equals(item, value) for item in iterate(source))


def _distinct(source: object) -> list:
    out: list = []
    seen: set = set()
    for item in iterate(source):
        try:
            key = (type(item), item)
            hash(key)
        except TypeError:
            key = None
        if key is not None and type(item) in (str, v.Char, int, float, bool, v.Guid,
                                              v.DateTime, v.EnumValue):
            if key in seen:
                continue
            seen.add(key)
            out.append(item)
        elif not any(v.cs_equals(item, other) for other in out):
            out.append(item)
    return out


def sort_key(value: object) -> tuple:
    """Comparer<T>.Default, approximately: nulls first, strings by invariant culture (case
    folded, lower case first on ties), everything else by its natural order."""
    if value is None:
        return (0,)
    if isinstance(value, str):
        return (1, value.casefold(), value.swapcase())
    if isinstance(value, bool):
        return (2, int(value))
    if isinstance(value, (int, float)):
        return (2, value)
    if isinstance(value, v.DateTime):
        return (3, value.value)
    if isinstance(value, v.EnumValue):
        return (4, value.value)
    if isinstance(value, v.Guid):
        return (5, value.text)
    if isinstance(value, timedelta):
        return (3, value)
    return (7,)


def _comparable_key(value: object) -> tuple:
    key = sort_key(value)
    if key[0] == 7:
        raise ExpressionRuntimeError("At least one object must implement IComparable.",
                                     "InvalidOperationException")
    return key


def _order_by(descending: bool):
    def order_by(source: object, key) -> list:
        items = list(iterate(source))
        return sorted(items, key=lambda item: _comparable_key(key(item)), reverse=descending)
    return order_by


def _skip(source: object, count: int) -> list:
    return list(iterate(source))[max(count, 0):]


def _take(source: object, count: int) -> list:
    return list(iterate(source))[:max(count, 0)]


def _numbers(source: object, selector=None) -> list:
    items = iterate(source)
    values = [selector(item) for item in items] if selector is not None else list(items)
    return [value for value in values if value is not None]


def _sum(source: object, selector=None) -> object:
    values = _numbers(source, selector)
    total = sum(values)
    return total


def _checked_sum(site: Site):
    """Sum of ints or longs throws on overflow (Enumerable.Sum is checked)."""
    kind = t.underlying(_sum_type(site) or DOUBLE).d
    if kind not in (t.INT_DEF, t.LONG_DEF):
        return _sum
    bits = 31 if kind is t.INT_DEF else 63

    def checked(source: object, selector=None) -> object:
        total = _sum(source, selector)
        if not -(2**bits) <= total < 2**bits:
            raise ExpressionRuntimeError("Arithmetic operation resulted in an overflow.",
                                         "OverflowException")
        return total
    return checked


def _min(source: object, selector=None) -> object:
    values = _numbers(source, selector)
    if not values:
        raise _no_elements()
    return min(values, key=_comparable_key)


def _max(source: object, selector=None) -> object:
    values = _numbers(source, selector)
    if not values:
        raise _no_elements()
    return max(values, key=_comparable_key)


def _average(source: object, selector=None) -> float:
    values = _numbers(source, selector)
    if not values:
        raise _no_elements()
    return sum(values) / len(values)


def _concat(source: object, other: object) -> list:
    if other is None:
        raise argument_null("second")
    return list(iterate(source)) + list(iterate(other))


def _sequence_equal(source: object, other: object) -> bool:
    if other is None:
        raise argument_null("second")
    a, b = list(iterate(source)), list(iterate(other))
    return len(a) == len(b) and all(v.cs_equals(x, y) for x, y in zip(a, b, strict=True))


def _to_dictionary(source: object, key_selector, value_selector=None) -> v.CsDictionary:
    data: dict = {}
    for item in iterate(source):
        key = key_selector(item)
        if key is None:
            raise argument_null("key")
        try:
            if key in data:
                raise ExpressionRuntimeError(
                    f"An item with the same key has already been added. Key: {to_string(key)}",
                    "ArgumentException")
        except TypeError:
            raise ExpressionRuntimeError("dictionary keys must be strings, numbers or other "
                                         "values", "ArgumentException") from None
        data[key] = item if value_selector is None else value_selector(item)
    return v.CsDictionary(data)


def _of_type(site: Site):
    target = site.type_args[0] if site.type_args else OBJECT
    return lambda source: [item for item in iterate(source) if v.is_instance(item, target)]


def _cast(site: Site):
    from .errors import invalid_cast

    target = site.type_args[0] if site.type_args else OBJECT

    def cast(source: object) -> list:
        out = []
        for item in iterate(source):
            if item is not None and not v.is_instance(item, target):
                raise invalid_cast(v.runtime_type_name(item), target.d.full_name)
            out.append(item)
        return out
    return cast


def _default_bound(factory):
    """``bind`` for ...OrDefault methods: default(T) from the static element type."""
    def bind(site: Site):
        return factory(v.default_of(site.elem))
    return bind


def _ext(name: str, params: tuple[Param, ...], returns: t.TypeLike, impl, *,
         bind=None, generic: int = 0) -> None:
    t.EXTENSIONS.setdefault(name, []).append(
        t.Method(name, params, returns, impl, generic, bind, extension=True))


_ext("Any", (), BOOL, _any)
_ext("Any", (PRED(),), BOOL, _any)
_ext("All", (PRED(),), BOOL, _all)
_ext("Count", (), INT, _count)
_ext("Count", (PRED(),), INT, _count)
_ext("LongCount", (), t.LONG, _count)
_ext("Where", (PRED(True),), _same_sequence, _where, bind=_indexed(_where, _where_indexed))
_ext("Select", (SEL(True),), _selected, _select, bind=_indexed(_select, _select_indexed))
_ext("SelectMany", (SEL(),), _selected_many, _select_many)
for _name, _impl, _factory in (("First", _first, _first_or_default),
                               ("Last", _last, _last_or_default),
                               ("Single", _single, _single_or_default)):
    _ext(_name, (), _elem, _impl)
    _ext(_name, (PRED(),), _elem, _impl)
    _ext(_name + "OrDefault", (), _elem, _factory(None), bind=_default_bound(_factory))
    _ext(_name + "OrDefault", (PRED(),), _elem, _factory(None), bind=_default_bound(_factory))
_ext("ElementAt", (Param("index", INT),), _elem, _element_at)
_ext("Contains", (Param("value", _elem_param),), BOOL, _contains)
_ext("ToList", (), lambda site: t.list_of(site.elem), lambda source: list(iterate(source)))
_ext("ToArray", (), lambda site: t.array_of(site.elem), lambda source: list(iterate(source)))
_ext("AsEnumerable", (), _same_sequence, lambda source: list(iterate(source)))
_ext("Distinct", (), _same_sequence, _distinct)
_ext("OrderBy", (SEL(),), _same_sequence, _order_by(False))
_ext("OrderByDescending", (SEL(),), _same_sequence, _order_by(True))
_ext("Reverse", (), _same_sequence, lambda source: list(reversed(list(iterate(source)))))
_ext("Skip", (Param("count", INT),), _same_sequence, _skip)
_ext("Take", (Param("count", INT),), _same_sequence, _take)
_ext("Sum", (), _sum_type, _sum, bind=_checked_sum)
_ext("Sum", (SEL(),), _sum_type, _sum, bind=_checked_sum)
_ext("Min", (), _minmax_type, _min)
_ext("Min", (SEL(),), _minmax_type, _min)
_ext("Max", (), _minmax_type, _max)
_ext("Max", (SEL(),), _minmax_type, _max)
_ext("Average", (), _average_type, _average)
_ext("Average", (SEL(),), _average_type, _average)
_ext("Concat", (Param("second", _other_sequence),), _same_sequence, _concat)
_ext("SequenceEqual", (Param("second", _other_sequence),), BOOL, _sequence_equal)
_ext("ToDictionary", (Param("keySelector", lambda_params=_one),), _dictionary_type,
     _to_dictionary)
_ext("ToDictionary", (Param("keySelector", lambda_params=_one),
                      Param("elementSelector", lambda_params=_one)), _dictionary_type,
     _to_dictionary)
_ext("OfType", (), _type_arg_sequence, lambda source: list(iterate(source)), bind=_of_type,
     generic=1)
_ext("Cast", (), _type_arg_sequence, lambda source: list(iterate(source)), bind=_cast,
     generic=1)


# -- arrays, lists, dictionaries, pairs, nullables ----------------------------------------


def _array_index(items, index: int) -> object:
    if type(index) is not int or not 0 <= index < len(items):
        raise index_out_of_range()
    return items[index]


def _list_index(items: list, index: int) -> object:
    if not 0 <= index < len(items):
        raise argument_out_of_range("index", "Index was out of range. Must be non-negative "
                                    "and less than the size of the collection.")
    return items[index]


def _arg0(site: Site) -> TypeRef:
    return site.receiver.args[0]  # type: ignore[union-attr]


def _arg1(site: Site) -> TypeRef:
    return site.receiver.args[1]  # type: ignore[union-attr]


A = t.ARRAY_DEF
A.prop("Length", INT, len)
A.indexer = t.Indexer(INT, _arg0, _array_index)

L = t.LIST_DEF
L.prop("Count", INT, len)
L.indexer = t.Indexer(INT, _arg0, _list_index)
L.method("Contains", (Param("item", _arg0),), BOOL, _contains)
L.method("IndexOf", (Param("item", _arg0),), INT,
         lambda items, value: next((i for i, x in enumerate(items) if v.cs_equals(x, value)), -1))

DICT = t.DICTIONARY_DEF
DICT.prop("Count", INT, len)
DICT.prop("Keys", lambda site: t.enumerable_of(_arg0(site)), lambda d: d.keys())
DICT.prop("Values", lambda site: t.enumerable_of(_arg1(site)), lambda d: d.values())
DICT.indexer = t.Indexer(_arg0, _arg1, lambda d, key: d.get(key))
DICT.method("ContainsKey", (Param("key", _arg0),), BOOL, lambda d, key: d.contains(key))
DICT.method("ContainsValue", (Param("value", _arg1),), BOOL,
            lambda d, value: any(v.cs_equals(x, value) for x in d.values()))
def _lookup_or_default(site: Site):
    """``GetValueOrDefault(key)``: default(TValue) when the key is missing."""
    default = v.default_of(_arg1(site))
    return lambda d, key: d.lookup(key, default)


def _value_or_default(site: Site):
    """``Nullable<T>.GetValueOrDefault()``: default(T) for null."""
    default = v.default_of(_arg0(site))
    return lambda value: default if value is None else value


DICT.method("GetValueOrDefault", (Param("key", _arg0),), _arg1, lambda d, key: d.lookup(key),
            bind=_lookup_or_default)
DICT.method("GetValueOrDefault", (Param("key", _arg0), Param("defaultValue", _arg1)), _arg1,
            lambda d, key, default: d.lookup(key, default))

KVP = t.KVP_DEF
KVP.prop("Key", _arg0, lambda pair: pair.key)
KVP.prop("Value", _arg1, lambda pair: pair.value)


def _nullable_value(value: object) -> object:
    if value is None:
        raise ExpressionRuntimeError("Nullable object must have a value.",
                                     "InvalidOperationException")
    return value


N = t.NULLABLE_DEF
N.prop("HasValue", BOOL, lambda value: value is not None)
N.prop("Value", _arg0, _nullable_value)
N.method("GetValueOrDefault", (), _arg0, lambda value: value, bind=_value_or_default)
N.method("GetValueOrDefault", (Param("defaultValue", _arg0),), _arg0,
         lambda value, default: default if value is None else value)
N.method("ToString", (), STRING, to_string)
N.method("Equals", (Param("other", OBJECT),), BOOL, v.cs_equals)
