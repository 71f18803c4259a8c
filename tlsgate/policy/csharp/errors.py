"""The two ways a policy expression fails: when it is compiled, and when it runs.

:class:`PolicyExpressionError` is raised while a policy loads (``tlsgate check-config`` prints
it as ``FILE:LINE:COL: message``). Its ``line`` and ``col`` are 1-based and relative to the
expression text that was compiled; :meth:`PolicyExpressionError.relocated` turns them into file
positions once the caller knows where that text starts.

:class:`ExpressionRuntimeError` is raised while a request is processed, where .NET would throw:
a null reference, an invalid cast, a missing dictionary key, a bad format string... ``kind``
names the .NET exception (``"NullReferenceException"``), ``message`` is .NET's message. The
policy engine turns it into ``on-error`` processing.
"""

from __future__ import annotations


class PolicyExpressionError(Exception):
    """A policy expression that cannot be compiled.

    ``line`` and ``col`` are 1-based positions in the expression text; lines are separated by
    ``"\\n"`` and columns count characters (a tab is one column).
    """

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message, line, col)
        self.message = message
        self.line = line
        self.col = col

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.message}"

    def relocated(self, line: int, col: int) -> PolicyExpressionError:
        """The same error with its position made absolute: the expression text starts at
        ``line``/``col`` of some file (both 1-based)."""
        if self.line == 1:
            return PolicyExpressionError(self.message, line, col + self.col - 1)
        return PolicyExpressionError(self.message, line + self.line - 1, self.col)


class ExpressionRuntimeError(Exception):
    """A policy expression that failed while it was evaluated, like a .NET exception would.

    ``kind`` is the name of the .NET exception type (``"InvalidCastException"``), ``message``
    the text .NET would give it.
    """

    def __init__(self, message: str, kind: str = "InvalidOperationException") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def null_reference() -> ExpressionRuntimeError:
    return ExpressionRuntimeError(
        "Object reference not set to an instance of an object.", "NullReferenceException")


def argument_null(parameter: str) -> ExpressionRuntimeError:
    return ExpressionRuntimeError(
        f"Value cannot be null. (Parameter '{parameter}')", "ArgumentNullException")


def argument_out_of_range(parameter: str, detail: str = "") -> ExpressionRuntimeError:
    text = detail or "Specified argument was out of the range of valid values."
    return ExpressionRuntimeError(f"{text} (Parameter '{parameter}')",
                                  "ArgumentOutOfRangeException")


def invalid_cast(source: str, target: str) -> ExpressionRuntimeError:
    return ExpressionRuntimeError(
        f"Unable to cast object of type '{source}' to type '{target}'.", "InvalidCastException")


def format_error(
        message: str = "Input string was not in a correct format.") -> ExpressionRuntimeError:
    return ExpressionRuntimeError(message, "FormatException")


def index_out_of_range() -> ExpressionRuntimeError:
    return ExpressionRuntimeError("Index was outside the bounds of the array.",
                                  "IndexOutOfRangeException")


def overflow(
        message: str = "Arithmetic operation resulted in an overflow.") -> ExpressionRuntimeError:
    return ExpressionRuntimeError(message, "OverflowException")
