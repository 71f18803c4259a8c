"""A compiled expression written out as one Python ``lambda f: ...``.

The compiler (:mod:`.compiler`, :mod:`.operators`) builds a tree of closures ``fn(frame)``:
``context.Request.Certificate == null || ...`` is a dozen closures calling each other per
evaluation. Where a closure is simple enough to say what it computes as Python source over
its parts — ``a(f) or b(f)``, ``get(recv(f))``, ``not a(f)`` — the site that builds it marks
it with :func:`shaped`. Once the whole expression is compiled, :func:`inline` writes the tree
out as one lambda: marked closures inline, any other closure called as it is (``_k3(f)``),
functions and constants by name (``_k4``). Same calls in the same order, the same exceptions
from the same helpers; only the Python frames between them are gone.

No text of the policy reaches the source: it holds only names of values kept in the lambda's
globals, ``f[slot]``, fresh temporaries (``_t0``) and Python operators from the templates
below. An expression too deep for CPython's parser keeps its closures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: False while expressions are compiled for ``[policies] compile = false`` (closures only).
ENABLED: ContextVar[bool] = ContextVar("tlsgate_inline_expressions", default=True)


@contextmanager
def closures_only() -> Iterator[None]:
    """Expressions compiled inside keep their closures (:func:`inline` does nothing)."""
    token = ENABLED.set(False)
    try:
        yield
    finally:
        ENABLED.reset(token)


class Value:
    """A part of a template used by name (a function to call, a constant), not called with
    the frame."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


def shaped(fn: Callable, template: str, *parts: Callable | Value) -> Callable:
    """Mark ``fn`` as computing ``template`` over ``parts``: ``{0}``, ``{1}``... are the parts
    (closures, written out in turn, or :class:`Value` names); ``{t}`` a fresh temporary."""
    fn.template = (template, parts)  # type: ignore[attr-defined]
    return fn


def inline(fn: Callable, slots: dict[int, int]) -> Callable:
    """``fn`` as one lambda, or ``fn`` itself when it is not marked or cannot be written out.
    ``slots``: ``id()`` of the frame getters (``itemgetter(n)``) -> their slot ``n``."""
    if getattr(fn, "template", None) is None or not ENABLED.get():
        return fn
    writer = _Writer(slots)
    try:
        code = compile("lambda f: " + writer.write(fn), "<policy expression>", "eval")
    except (SyntaxError, RecursionError, MemoryError):
        return fn
    return eval(code, writer.namespace)  # noqa: S307 - source written above, names only


class _Writer:
    def __init__(self, slots: dict[int, int]) -> None:
        self.slots = slots
        self.namespace: dict[str, object] = {}
        self._names: dict[int, str] = {}
        self._temporaries = 0

    def name(self, value: object) -> str:
        name = self._names.get(id(value))
        if name is None:
            name = self._names[id(value)] = f"_k{len(self._names)}"
            self.namespace[name] = value
        return name

    def write(self, fn: Callable) -> str:
        slot = self.slots.get(id(fn))
        if slot is not None:
            return f"f[{slot}]"
        shape = getattr(fn, "template", None)
        if shape is None:
            return f"{self.name(fn)}(f)"
        template, parts = shape
        texts = [self.name(part.value) if isinstance(part, Value) else self.write(part)
                 for part in parts]
        temporary = ""
        if "{t}" in template:
            temporary = f"_t{self._temporaries}"
            self._temporaries += 1
        return template.format(*texts, t=temporary)
