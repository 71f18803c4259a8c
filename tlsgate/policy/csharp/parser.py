"""Recursive-descent parser for the C# subset of policy expressions.

:func:`parse_expression` reads one expression (the inside of ``@(...)``), :func:`parse_block`
a list of statements (the inside of ``@{...}``). Both take the token list of
:func:`~.lexer.tokenize` and optionally a ``terminator``: the closing ``)`` or ``}`` of a
template, which must then follow the expression and end the text.

Precedence, loosest first, as in C#: lambda, ``?:``, ``??``, ``||``, ``&&``, ``|``, ``^``,
``&``, ``== !=``, ``< > <= >= is as``, ``+ -``, ``* / %``, unary ``! - + ~`` and casts, then
primary expressions with member access, ``?.``, ``?[``, calls, indexers and the null-forgiving
``!``.

Errors are :class:`~.errors.PolicyExpressionError` at the token that cannot be read, or at the
opening bracket that is never closed. Nesting deeper than :data:`MAX_DEPTH` is an error too, so
that no input can exhaust Python's stack.
"""

from __future__ import annotations

from . import nodes as n
from .errors import PolicyExpressionError
from .lexer import Token

#: Deepest nesting of syntax accepted (brackets, operators, statements).
MAX_DEPTH = 96

PREDEFINED_TYPES = frozenset({
    "string", "int", "long", "double", "bool", "object", "char", "byte", "float", "decimal",
    "short", "ushort", "uint", "ulong", "sbyte", "void",
})

#: C# keywords that cannot be names. Predefined types are handled separately.
KEYWORDS = frozenset({
    "abstract", "as", "base", "break", "case", "catch", "checked", "class", "const",
    "continue", "default", "delegate", "do", "else", "enum", "event", "explicit", "extern",
    "false", "finally", "fixed", "for", "foreach", "goto", "if", "implicit", "in", "interface",
    "internal", "is", "lock", "namespace", "new", "null", "operator", "out", "override",
    "params", "private", "protected", "public", "readonly", "ref", "return", "sealed",
    "sizeof", "stackalloc", "static", "struct", "switch", "this", "throw", "true", "try",
    "typeof", "unchecked", "unsafe", "using", "virtual", "volatile", "while",
}) | PREDEFINED_TYPES

_UNSUPPORTED_STATEMENTS = frozenset({
    "for", "foreach", "while", "do", "switch", "try", "throw", "using", "lock", "break",
    "continue", "goto", "catch", "finally", "yield", "fixed", "unsafe", "checked", "unchecked",
})
_ASSIGN_OPS = frozenset({"=", "+=", "-=", "*=", "/=", "%="})
_BINARY_LEVELS = (
    ("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", ">", "<=", ">="),
    ("+", "-"), ("*", "/", "%"),
)
_RELATIONAL_LEVEL = 6
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
# Tokens after "(Type)" that make it a cast, when Type is not a predefined type keyword.
_CAST_FOLLOWERS = frozenset({"ident", "int", "long", "double", "string", "char", "interp"})


def parse_expression(tokens: list[Token], terminator: tuple[str, int, int] | None = None) -> n.Node:
    """One expression; ``terminator`` is ``(closer, line, col)`` of the template opener."""
    parser = _Parser(tokens)
    node = parser.expression()
    parser.finish(terminator)
    check_depth(node)
    return node


def parse_block(tokens: list[Token], terminator: tuple[str, int, int] | None = None) -> n.Block:
    """Statements up to the end of the text (or the template's closing brace)."""
    parser = _Parser(tokens)
    first = parser.tok
    statements = []
    while parser.tok.kind != "eof" and not (terminator and parser.tok.is_op(terminator[0])):
        statements.append(parser.statement())
    end = (parser.tok.line, parser.tok.col)
    parser.finish(terminator)
    block = n.Block(first.line, first.col, statements, end)
    check_depth(block)
    return block


def check_depth(root: n.Node) -> None:
    """Refuse trees deeper than MAX_DEPTH (``a+a+a+...`` builds them without recursion)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PolicyExpressionError("expression is nested too deeply", node.line, node.col)
        for child in _children(node):
            stack.append((child, depth + 1))


def _children(node: n.Node):
    for name in type(node).__slots__:
        value = getattr(node, name)
        if isinstance(value, n.Node):
            yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, n.Node):
                    yield item


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    # -- token helpers -------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def peek(self, ahead: int = 1) -> Token:
        index = min(self.pos + ahead, len(self.tokens) - 1)
        return self.tokens[index]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        if token.kind != "eof":
            self.pos += 1
        return token

    def accept(self, op: str) -> Token | None:
        if self.tok.is_op(op):
            return self.next()
        return None

    def error(self, message: str, token: Token | None = None) -> PolicyExpressionError:
        token = token or self.tok
        return PolicyExpressionError(message, token.line, token.col)

    def unexpected(self, expected: str) -> PolicyExpressionError:
        token = self.tok
        if token.kind == "eof":
            return self.error(f"{expected} expected, but the expression ends here")
        return self.error(f"{expected} expected, found {_describe(token)}")

    def expect(self, op: str, opener: Token | None = None) -> Token:
        """Consume ``op``; a missing closer at the end of the text is blamed on its opener."""
        if self.tok.is_op(op):
            return self.next()
        if opener is not None and self.tok.kind == "eof":
            raise self.error(f"'{opener.value}' is not closed (missing '{op}')", opener)
        raise self.unexpected(f"'{op}'")

    def ident(self, what: str = "identifier") -> Token:
        token = self.tok
        if token.kind != "ident" or (token.value in KEYWORDS and not token.text.startswith("@")):
            raise self.unexpected(what)
        return self.next()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("expression is nested too deeply")

    def finish(self, terminator: tuple[str, int, int] | None) -> None:
        if terminator is not None:
            closer, line, col = terminator
            if self.tok.kind == "eof":
                opener = "@(" if closer == ")" else "@{"
                raise PolicyExpressionError(f"'{opener}' is not closed (missing '{closer}')",
                                            line, col)
            if not self.tok.is_op(closer):
                raise self.unexpected(f"'{closer}'")
            self.next()
        if self.tok.kind != "eof":
            if self.tok.kind == "op" and self.tok.value in (")", "]", "}"):
                raise self.error(f"unbalanced '{self.tok.value}'")
            raise self.unexpected("end of expression" if terminator is None
                                  else "end of attribute value")

    def is_keyword(self, token: Token, word: str) -> bool:
        return token.kind == "ident" and token.value == word and not token.text.startswith("@")

    # -- statements ----------------------------------------------------------------------

    def statement(self) -> n.Node:
        self.enter()
        try:
            return self._statement()
        finally:
            self.depth -= 1

    def _statement(self) -> n.Node:
        token = self.tok
        if token.is_op("{"):
            return self.block()
        if token.is_op(";"):
            self.next()
            return n.Empty(token.line, token.col)
        if token.kind == "ident" and not token.text.startswith("@"):
            word = token.value
            if word == "if":
                return self.if_statement()
            if word == "return":
                self.next()
                value = None if self.tok.is_op(";") else self.expression()
                self.expect(";")
                return n.Return(token.line, token.col, value)
            if word in _UNSUPPORTED_STATEMENTS:
                raise self.error(f"'{word}' statements are not supported in policy expressions")
            if word == "else":
                raise self.error("'else' without 'if'")
            if word == "var" and self.peek().kind == "ident":
                self.next()
                return self.declaration(token, None)
        declaration = self.try_declaration()
        if declaration is not None:
            return declaration
        expr = self.expression()
        if self.tok.kind == "op" and self.tok.value in _ASSIGN_OPS:
            op = self.next()
            value = self.expression()
            self.expect(";")
            return n.Assign(op.line, op.col, op.value, expr, value)
        if self.tok.kind == "op" and self.tok.value in ("++", "--"):
            raise self.error(f"'{self.tok.value}' is not supported; write x = x + 1")
        self.expect(";")
        if not isinstance(expr, n.Call):
            raise PolicyExpressionError(
                "only assignments and method calls can be used as a statement",
                *n.start_of(expr))
        return n.ExprStatement(expr.line, expr.col, expr)

    def block(self) -> n.Block:
        opener = self.expect("{")
        statements = []
        while not self.tok.is_op("}"):
            if self.tok.kind == "eof":
                raise self.error("'{' is not closed (missing '}')", opener)
            statements.append(self.statement())
        end = self.next()
        return n.Block(opener.line, opener.col, statements, (end.line, end.col))

    def if_statement(self) -> n.If:
        token = self.next()
        opener = self.expect("(")
        condition = self.expression()
        self.expect(")", opener)
        then = self.embedded_statement()
        otherwise = None
        if self.is_keyword(self.tok, "else"):
            self.next()
            otherwise = self.embedded_statement()
        return n.If(token.line, token.col, condition, then, otherwise)

    def embedded_statement(self) -> n.Node:
        if self.tok.kind == "eof":
            raise self.unexpected("statement")
        statement = self.statement()
        if isinstance(statement, n.VarDecl):
            raise PolicyExpressionError(
                "a declaration is not allowed here; put it in braces", statement.line,
                statement.col)
        return statement

    def try_declaration(self) -> n.VarDecl | None:
        """``Type name [= value], ...;`` when the tokens read as one, else None (no tokens
        consumed)."""
        start = self.pos
        token = self.tok
        if token.kind != "ident" or \
                (token.value in KEYWORDS and token.value not in PREDEFINED_TYPES):
            return None
        type_syntax = self.try_type()
        if type_syntax is None or self.tok.kind != "ident" or self.tok.value in KEYWORDS:
            self.pos = start
            return None
        if not (self.peek().is_op("=") or self.peek().is_op(";") or self.peek().is_op(",")):
            self.pos = start
            return None
        return self.declaration(token, type_syntax)

    def declaration(self, start: Token, type_syntax: n.TypeSyntax | None) -> n.VarDecl:
        declarators = []
        while True:
            name = self.ident("variable name")
            value = None
            if self.accept("="):
                value = self.expression()
            elif type_syntax is None:
                raise self.unexpected("'=' (an implicitly typed variable needs a value)")
            declarators.append(n.Declarator(name.line, name.col, name.value, value))
            if not self.accept(","):
                break
            if type_syntax is None:
                raise self.error("an implicitly typed declaration cannot declare several variables")
        self.expect(";")
        return n.VarDecl(start.line, start.col, type_syntax, declarators)

    # -- expressions ---------------------------------------------------------------------

    def expression(self) -> n.Node:
        self.enter()
        try:
            lam = self.try_lambda()
            if lam is not None:
                return lam
            return self.conditional()
        finally:
            self.depth -= 1

    def try_lambda(self) -> n.Lambda | None:
        token = self.tok
        if token.kind == "ident" and self.peek().is_op("=>"):
            if token.value in KEYWORDS and not token.text.startswith("@"):
                return None
            self.next()
            self.next()
            return n.Lambda(token.line, token.col, [(token.value, token.line, token.col)],
                            self.lambda_body())
        if not token.is_op("("):
            return None
        # (a, b) => ... : look ahead for identifiers and commas then ") =>".
        index = self.pos + 1
        params = []
        tokens = self.tokens
        if tokens[index].is_op(")"):
            index += 1
        else:
            while True:
                item = tokens[index]
                if item.kind != "ident" or \
                        (item.value in KEYWORDS and not item.text.startswith("@")):
                    return None
                params.append((item.value, item.line, item.col))
                index += 1
                if tokens[index].is_op(","):
                    index += 1
                    continue
                if not tokens[index].is_op(")"):
                    return None
                index += 1
                break
        if not tokens[min(index, len(tokens) - 1)].is_op("=>"):
            return None
        self.pos = index + 1
        return n.Lambda(token.line, token.col, params, self.lambda_body())

    def lambda_body(self) -> n.Node:
        if self.tok.is_op("{"):
            self.enter()
            try:
                return self.block()
            finally:
                self.depth -= 1
        return self.expression()

    def conditional(self) -> n.Node:
        condition = self.coalesce()
        question = self.accept("?")
        if question is None:
            return condition
        then = self.expression()
        self.expect(":")
        otherwise = self.expression()
        return n.Conditional(question.line, question.col, condition, then, otherwise)

    def coalesce(self) -> n.Node:
        left = self.binary(0)
        op = self.accept("??")
        if op is None:
            return left
        self.enter()
        try:
            right = self.coalesce()
        finally:
            self.depth -= 1
        return n.Binary(op.line, op.col, "??", left, right)

    def binary(self, level: int) -> n.Node:
        if level == len(_BINARY_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        ops = _BINARY_LEVELS[level]
        while True:
            token = self.tok
            if token.kind == "op" and token.value in ops:
                self.next()
                right = self.binary(level + 1)
                left = n.Binary(token.line, token.col, token.value, left, right)
            elif level == _RELATIONAL_LEVEL and self.is_keyword(token, "is"):
                left = self.is_expression(left)
            elif level == _RELATIONAL_LEVEL and self.is_keyword(token, "as"):
                self.next()
                left = n.AsType(token.line, token.col, left, self.type_or_error())
            else:
                return left

    def is_expression(self, operand: n.Node) -> n.Node:
        token = self.next()
        negated = False
        if self.is_keyword(self.tok, "not"):
            self.next()
            negated = True
        if self.is_keyword(self.tok, "null"):
            self.next()
            return n.IsType(token.line, token.col, operand, None, negated)
        type_syntax = self.type_or_error()
        if self.tok.kind == "ident" and self.tok.value not in KEYWORDS:
            raise self.error("declaration patterns ('is T name') are not supported")
        return n.IsType(token.line, token.col, operand, type_syntax, negated)

    def unary(self) -> n.Node:
        token = self.tok
        if token.kind == "op":
            if token.value in ("!", "-", "+", "~"):
                self.enter()
                try:
                    self.next()
                    operand = self.unary()
                finally:
                    self.depth -= 1
                if token.value == "-" and isinstance(operand, n.Literal) and \
                        operand.kind in ("int", "long", "double") and operand.line == token.line:
                    return n.Literal(token.line, token.col, -operand.value, operand.kind)
                return n.Unary(token.line, token.col, token.value, operand)
            if token.value in ("++", "--"):
                raise self.error(f"'{token.value}' is not supported; write x = x + 1")
            if token.value == "(":
                cast = self.try_cast()
                if cast is not None:
                    return cast
        return self.postfix(self.primary())

    def try_cast(self) -> n.Cast | None:
        start = self.pos
        opener = self.next()
        type_syntax = self.try_type()
        if type_syntax is None or not self.tok.is_op(")"):
            self.pos = start
            return None
        follower = self.peek()
        is_cast = type_syntax.name in PREDEFINED_TYPES or type_syntax.args or \
            type_syntax.array_rank or type_syntax.nullable
        if not is_cast:
            is_cast = (follower.kind in _CAST_FOLLOWERS and not (
                follower.kind == "ident" and follower.value in ("is", "as")
                and not follower.text.startswith("@"))) or follower.is_op("(") or \
                follower.is_op("!") or follower.is_op("~")
        if not is_cast:
            self.pos = start
            return None
        self.next()  # )
        self.enter()
        try:
            operand = self.unary()
        finally:
            self.depth -= 1
        return n.Cast(opener.line, opener.col, type_syntax, operand)

    def postfix(self, node: n.Node) -> n.Node:
        while True:
            token = self.tok
            if token.kind != "op":
                return node
            op = token.value
            if op == ".":
                self.next()
                name = self.member_name()
                node = n.Member(name.line, name.col, node, name.value, self.try_type_args())
            elif op == "?." or (op == "?" and self.peek().is_op("[")):
                self.next()
                binding = n.Binding(token.line, token.col)
                if op == "?.":
                    name = self.member_name()
                    first: n.Node = n.Member(name.line, name.col, binding, name.value,
                                             self.try_type_args())
                else:
                    first = self.index(binding)
                self.enter()
                try:
                    body = self.postfix(first)
                finally:
                    self.depth -= 1
                return n.ConditionalAccess(token.line, token.col, node, body)
            elif op == "(":
                opener = self.next()
                node = n.Call(node.line, node.col, node, self.arguments(opener))
            elif op == "[":
                node = self.index(node)
            elif op == "!" and not self.peek().kind == "eof" and _ends_operand(self.peek()):
                self.next()  # null-forgiving x!: no effect at run time
            elif op in ("++", "--"):
                raise self.error(f"'{op}' is not supported; write x = x + 1")
            else:
                return node

    def member_name(self) -> Token:
        token = self.tok
        if token.kind != "ident":
            raise self.unexpected("member name")
        return self.next()

    def index(self, target: n.Node) -> n.Index:
        opener = self.expect("[")
        args = [self.expression()]
        while self.accept(","):
            args.append(self.expression())
        self.expect("]", opener)
        return n.Index(opener.line, opener.col, target, args)

    def arguments(self, opener: Token) -> list[n.Argument]:
        args: list[n.Argument] = []
        if self.accept(")"):
            return args
        while True:
            token = self.tok
            if self.is_keyword(token, "out") or self.is_keyword(token, "ref") or \
                    self.is_keyword(token, "in"):
                raise self.error(f"'{token.value}' arguments are not supported")
            name = None
            if token.kind == "ident" and self.peek().is_op(":") and \
                    (token.value not in KEYWORDS or token.text.startswith("@")):
                name = token.value
                self.next()
                self.next()
            value = self.expression()
            args.append(n.Argument(token.line, token.col, value, name))
            if self.accept(","):
                continue
            self.expect(")", opener)
            return args

    def primary(self) -> n.Node:
        token = self.tok
        kind = token.kind
        if kind in ("int", "long", "double", "string", "char"):
            self.next()
            return n.Literal(token.line, token.col, token.value, kind)
        if kind == "interp":
            self.next()
            return self.interpolated(token)
        if kind == "op" and token.value == "(":
            self.enter()
            try:
                opener = self.next()
                inner = self.expression()
                self.expect(")", opener)
            finally:
                self.depth -= 1
            return inner
        if kind == "ident":
            word = token.value
            verbatim = token.text.startswith("@")
            if not verbatim:
                if word in ("true", "false"):
                    self.next()
                    return n.Literal(token.line, token.col, word == "true", "bool")
                if word == "null":
                    self.next()
                    return n.Literal(token.line, token.col, None, "null")
                if word in PREDEFINED_TYPES:
                    self.next()
                    return n.TypeName(token.line, token.col, word)
                if word == "new":
                    return self.new_expression()
                if word in ("typeof", "sizeof", "default", "checked", "unchecked", "this",
                            "base", "delegate", "stackalloc", "throw", "switch", "await"):
                    raise self.error(f"'{word}' is not supported in policy expressions")
                if word in KEYWORDS:
                    raise self.unexpected("expression")
            self.next()
            type_args = self.try_type_args()
            if type_args is not None:
                raise self.error("generic names are only supported as methods (x.M<T>())",
                                 token)
            return n.Name(token.line, token.col, word)
        raise self.unexpected("expression")

    def interpolated(self, token: Token) -> n.Interpolated:
        parts: list[str | n.InterpolationHole] = []
        for part in token.value:  # type: ignore[attr-defined]
            if isinstance(part, str):
                parts.append(part)
                continue
            if part.tokens[0].kind == "eof":
                raise PolicyExpressionError("expression expected in interpolation", *part.end)
            sub = _Parser(part.tokens)
            sub.depth = self.depth + 1
            expr = sub.expression()
            if sub.tok.kind != "eof":
                raise sub.unexpected("'}'")
            parts.append(n.InterpolationHole(part.line, part.col, expr, part.alignment,
                                             part.format))
        return n.Interpolated(token.line, token.col, parts)

    def new_expression(self) -> n.Node:
        token = self.next()
        element = None
        if self.tok.is_op("["):
            self.next()
            self.expect("]")
        else:
            element = self.try_type(allow_array=False)
            if element is None:
                raise self.unexpected("type")
            if not self.tok.is_op("["):
                raise self.error("only arrays can be created with 'new' (new[] { ... })",
                                 token)
            self.next()
            self.expect("]")
        opener = self.tok
        self.expect("{")
        items: list[n.Node] = []
        while not self.tok.is_op("}"):
            items.append(self.expression())
            if not self.accept(","):
                break
        self.expect("}", opener)
        return n.NewArray(token.line, token.col, element, items)

    # -- types ---------------------------------------------------------------------------

    def type_or_error(self) -> n.TypeSyntax:
        type_syntax = self.try_type(allow_nullable=False)
        if type_syntax is None:
            raise self.unexpected("type")
        return type_syntax

    def try_type(self, allow_array: bool = True,
                 allow_nullable: bool = True) -> n.TypeSyntax | None:
        """A type, or None with the position unchanged."""
        start = self.pos
        token = self.tok
        if token.kind != "ident" or (token.value in KEYWORDS and token.value not in PREDEFINED_TYPES
                                     and not token.text.startswith("@")):
            return None
        self.next()
        name = token.value
        dotted = token.value not in PREDEFINED_TYPES
        while dotted and self.tok.is_op(".") and self.peek().kind == "ident":
            self.next()
            name += "." + self.next().value  # type: ignore[operator]
        args: list[n.TypeSyntax] = []
        if self.tok.is_op("<"):
            parsed = self._type_arg_list()
            if parsed is None:
                self.pos = start
                return None
            args = parsed
        syntax = n.TypeSyntax(token.line, token.col, name, args)
        if allow_nullable and self.tok.is_op("?") and not self.peek().is_op("[") and \
                self._nullable_follows():
            self.next()
            syntax.nullable = True
        while allow_array and self.tok.is_op("[") and self.peek().is_op("]"):
            self.next()
            self.next()
            syntax.array_rank += 1
        return syntax

    def _nullable_follows(self) -> bool:
        """``int?`` in a type: the '?' is followed by what ends a type, not by an operand."""
        after = self.peek()
        return after.kind == "eof" or \
            (after.kind == "op" and after.value in (")", ">", ",", "]")) or \
            (after.kind == "ident" and after.value not in KEYWORDS)

    def _type_arg_list(self) -> list[n.TypeSyntax] | None:
        if self.depth + 1 > MAX_DEPTH:
            return None
        self.depth += 1
        try:
            self.next()  # <
            args = []
            while True:
                arg = self.try_type()
                if arg is None:
                    return None
                args.append(arg)
                if self.accept(","):
                    continue
                if self.accept(">"):
                    return args
                return None
        finally:
            self.depth -= 1

    def try_type_args(self) -> list[n.TypeSyntax] | None:
        """``<T, ...>`` right before ``(``, as in ``As<string>()``; else None, nothing
        consumed (so that ``a < b`` stays a comparison)."""
        if not self.tok.is_op("<"):
            return None
        start = self.pos
        args = self._type_arg_list()
        if args is None or not self.tok.is_op("("):
            self.pos = start
            return None
        return args


def _ends_operand(token: Token) -> bool:
    """After a null-forgiving ``!``: a token that continues or ends the operand."""
    return token.kind == "op" and token.value in (".", "?.", ")", "]", "}", ",", ";", "[",
                                                  "==", "!=", "??", "?", ":")


def _describe(token: Token) -> str:
    if token.kind == "op":
        return f"'{token.value}'"
    if token.kind == "ident":
        return f"'{token.value}'"
    if token.kind in ("string", "interp"):
        return "a string"
    if token.kind == "char":
        return "a character literal"
    return f"'{token.text}'"
