"""Syntax tree of policy expressions, as the parser builds it and the compiler reads it.

Every node has the 1-based ``line``/``col`` of the place an error about it should point at:
its first token for most nodes, the operator for binary operators, the member name for member
access. Nodes are plain records; all meaning is given by the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Node:
    line: int
    col: int


# -- types as written ----------------------------------------------------------------------


@dataclass(slots=True)
class TypeSyntax(Node):
    """``string``, ``System.DateTime``, ``List<string>``, ``string[]``, ``int?``."""

    name: str                           # dotted name as written
    args: list[TypeSyntax] = field(default_factory=list)
    array_rank: int = 0                 # number of [] suffixes
    nullable: bool = False

    def __str__(self) -> str:
        text = self.name
        if self.args:
            text += "<" + ", ".join(str(a) for a in self.args) + ">"
        if self.nullable:
            text += "?"
        return text + "[]" * self.array_rank


# -- expressions ---------------------------------------------------------------------------


@dataclass(slots=True)
class Literal(Node):
    value: object
    kind: str                           # "string" "char" "int" "long" "double" "bool" "null"


@dataclass(slots=True)
class InterpolationHole(Node):
    expr: Node
    alignment: int | None
    format: str | None


@dataclass(slots=True)
class Interpolated(Node):
    parts: list[str | InterpolationHole]


@dataclass(slots=True)
class Name(Node):
    name: str


@dataclass(slots=True)
class Member(Node):
    """``target.name`` (``line``/``col`` point at ``name``); ``type_args`` for ``M<T>``."""

    target: Node
    name: str
    type_args: list[TypeSyntax] | None = None


@dataclass(slots=True)
class Binding(Node):
    """The receiver inside a :class:`ConditionalAccess`: the value that was not null."""


@dataclass(slots=True)
class ConditionalAccess(Node):
    """``target?.rest``: ``body`` is ``rest`` applied to a :class:`Binding`."""

    target: Node
    body: Node


@dataclass(slots=True)
class Index(Node):
    target: Node
    args: list[Node]


@dataclass(slots=True)
class Argument(Node):
    value: Node
    name: str | None = None             # named argument: ``preserveContent: true``


@dataclass(slots=True)
class Call(Node):
    """``callee(args)`` where callee is a :class:`Member` or :class:`Name`."""

    callee: Node
    args: list[Argument]


@dataclass(slots=True)
class Lambda(Node):
    params: list[tuple[str, int, int]]  # (name, line, col)
    body: Node                          # expression or Block


@dataclass(slots=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(slots=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(slots=True)
class Conditional(Node):
    condition: Node
    then: Node
    otherwise: Node


@dataclass(slots=True)
class Cast(Node):
    type: TypeSyntax
    operand: Node


@dataclass(slots=True)
class IsType(Node):
    """``x is null``, ``x is not null`` (type None), ``x is string`` (type given)."""

    operand: Node
    type: TypeSyntax | None
    negated: bool = False


@dataclass(slots=True)
class AsType(Node):
    operand: Node
    type: TypeSyntax


@dataclass(slots=True)
class NewArray(Node):
    """``new[] { ... }`` (element type None) or ``new string[] { ... }``."""

    element: TypeSyntax | None
    items: list[Node]


@dataclass(slots=True)
class TypeName(Node):
    """A predefined type keyword used as an expression: ``string.IsNullOrEmpty``."""

    name: str


# -- statements ----------------------------------------------------------------------------


@dataclass(slots=True)
class Block(Node):
    statements: list[Node]
    end: tuple[int, int] = (0, 0)       # position of the closing brace (or text end)


@dataclass(slots=True)
class Declarator(Node):
    name: str
    value: Node | None


@dataclass(slots=True)
class VarDecl(Node):
    type: TypeSyntax | None             # None: ``var``
    declarators: list[Declarator]


@dataclass(slots=True)
class Assign(Node):
    op: str                             # "=" "+=" ...
    target: Node
    value: Node


@dataclass(slots=True)
class ExprStatement(Node):
    expr: Node


@dataclass(slots=True)
class If(Node):
    condition: Node
    then: Node
    otherwise: Node | None


@dataclass(slots=True)
class Return(Node):
    value: Node | None


@dataclass(slots=True)
class Empty(Node):
    pass


def start_of(node: Node) -> tuple[int, int]:
    """Position of the first token of an expression (nodes keep their operator's position)."""
    while True:
        if isinstance(node, Binary):
            node = node.left
        elif isinstance(node, Conditional):
            node = node.condition
        elif isinstance(node, (Member, Index, ConditionalAccess)):
            node = node.target
        elif isinstance(node, (IsType, AsType)):
            node = node.operand
        elif isinstance(node, Call):
            node = node.callee
        else:
            return node.line, node.col
