"""What compiling gives: :class:`CompiledExpression` and, for literal attribute values,
:class:`ConstantExpression` with the same interface."""

from __future__ import annotations

from collections.abc import Callable

from .errors import ExpressionRuntimeError
from .types import TypeRef


class CompiledExpression:
    """A policy expression compiled once, evaluated per request with :meth:`evaluate`.

    Attributes: ``source`` (the text), ``block`` (``@{}`` statements rather than ``@()``),
    ``result_type`` (C# name of the static type: ``"bool"``, ``"string"``...),
    ``reads_certificate`` and ``reads_body`` (inputs to fetch before evaluating), ``reads``
    (all of them by name: ``"certificate"``, ``"body"``, ``"verify"`` when ``Verify()`` or
    ``VerifyNoRevocation()`` may run),
    ``is_constant`` (False; see :class:`ConstantExpression`).
    """

    __slots__ = ("source", "block", "result_type", "reads", "reads_certificate", "reads_body",
                 "_fn", "_blank")

    is_constant = False

    def __init__(self, source: str, block: bool, fn: Callable, slots: int,
                 result_type: TypeRef, reads: set[str]) -> None:
        self.source = source
        self.block = block
        self.result_type = str(result_type)
        self.reads = frozenset(reads)
        self.reads_certificate = "certificate" in reads
        self.reads_body = "body" in reads
        self._fn = fn
        self._blank = [None] * (slots - 1)

    def evaluate(self, context: object) -> object:
        """The value of the expression for ``context`` (the APIM ``context`` object).

        Raises :class:`ExpressionRuntimeError` (and nothing else) when evaluation fails.
        """
        frame = [context]
        frame += self._blank
        try:
            return self._fn(frame)
        except ExpressionRuntimeError:
            raise
        except RecursionError:
            raise ExpressionRuntimeError("Insufficient stack to continue executing the "
                                         "program safely.",
                                         "InsufficientExecutionStackException") from None
        except MemoryError:
            raise ExpressionRuntimeError("Insufficient memory to continue the execution of "
                                         "the program.", "OutOfMemoryException") from None
        except (ArithmeticError, ValueError, IndexError, KeyError, TypeError,
                AttributeError) as exc:
            # A gap in the run-time library: report it as an expression failure rather than
            # crash the request. Tests treat "InternalError" as a bug.
            raise ExpressionRuntimeError(f"{type(exc).__name__}: {exc}", "InternalError") from exc

    def __repr__(self) -> str:
        return f"<CompiledExpression {self.source!r}>"


class ConstantExpression:
    """An attribute value without ``@(...)``: the same interface, a fixed string."""

    __slots__ = ("source", "value")

    is_constant = True
    block = False
    result_type = "string"
    reads: frozenset[str] = frozenset()
    reads_certificate = False
    reads_body = False

    def __init__(self, value: str) -> None:
        self.source = value
        self.value = value

    def evaluate(self, context: object = None) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"<ConstantExpression {self.value!r}>"
