"""Syntax tree -> Python closures, type-checked against the member registry.

:func:`compile_tree` turns a parsed expression or statement block into a
:class:`CompiledExpression`. Compilation happens once, when the policy loads; evaluation then
only calls nested closures ``fn(frame)``, where ``frame`` is a list holding ``context`` in slot
0 and local variables, lambda parameters and ``?.`` temporaries in the slots the compiler
assigned. No tree is walked per request. The closures of an ``@( )`` expression are then
written out as one Python lambda where they can be (:mod:`.inline`: the same calls, fewer
frames); that source holds only names of compiled values, never text of the policy.

Every sub-expression has a static type (:class:`~.types.TypeRef`). Members are looked up in the
registry of :mod:`.types` at compile time, so misspelt members, wrong argument counts and type
mismatches are reported with the position of the offending token, and nothing outside the
registry (``__class__``, ``GetType()``, ``System.IO``) is reachable.

The compiler also records which request inputs an expression reads (``reads_certificate``,
``reads_body``): the policy engine fetches them, possibly asynchronously, before evaluating.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

from . import nodes as n
from . import operators as ops
from . import runtime as rt
from . import types as t
from . import values as v
from .compiled import CompiledExpression, ConstantExpression  # noqa: F401 (re-exported)
from .conversions import cast_closure, common_return_type, common_type
from .errors import (
    PolicyExpressionError,
    argument_null,
    null_reference,
)
from .formatting import align, format_value, to_string
from .inline import Value, inline, shaped
from .operators import V, error
from .types import BOOL, NULL, OBJECT, STRING, MemberUseError, Method, Param, Site, TypeRef

#: What a statement closure returns when it completes without ``return``.
NOTHING = object()


class _TypeTarget:
    """A type name used as the receiver of a static member (``DateTime.UtcNow``)."""

    __slots__ = ("typedef", "name")

    def __init__(self, typedef: t.TypeDef, name: str) -> None:
        self.typedef = typedef
        self.name = name


class _Namespace:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class _Local:
    __slots__ = ("slot", "type", "name")

    def __init__(self, slot: int, type_: TypeRef, name: str) -> None:
        self.slot = slot
        self.type = type_
        self.name = name


def compile_tree(tree: n.Node, source: str, block: bool,
                 context_type: TypeRef) -> CompiledExpression:
    compiler = Compiler(context_type)
    if block:
        assert isinstance(tree, n.Block)
        fn, result = compiler.top_block(tree)
    else:
        value = compiler.expr(tree)
        if value.type.d is t.NULL_DEF:
            result = OBJECT
        else:
            result = value.type
        fn = inline(value.fn, compiler.getters)
    return CompiledExpression(source, block, fn, compiler.slots, result, compiler.reads)


def _const(value: object) -> Callable:
    return shaped(lambda f: value, "{0}", Value(value))


def _raise_null_reference() -> None:
    raise null_reference()


def _check_receiver(fn: Callable, extension: bool) -> Callable:
    """The receiver's closure, raising NullReference (or ArgumentNull for LINQ) on null."""
    if extension:
        def receiver(f):
            value = fn(f)
            if value is None:
                raise argument_null("source")
            return value
        return receiver

    def receiver(f):
        value = fn(f)
        if value is None:
            raise null_reference()
        return value
    return receiver


def _needs_check(value: V) -> bool:
    return value.can_be_null and value.type.d is not t.NULLABLE_DEF


class Compiler:
    def __init__(self, context_type: TypeRef) -> None:
        self.context_type = context_type
        self.slots = 1                      # slot 0: context
        self.scopes: list[dict[str, _Local]] = [{}]
        self.bindings: list[tuple[int, TypeRef]] = []
        self.returns: list[list[TypeRef]] = []
        self.reads: set[str] = set()
        self.getters: dict[int, int] = {}       # id(itemgetter) -> its slot, for inline()
        self._keep: list[Callable] = []
        self.dispatch: dict[type, Callable[[n.Node], object]] = {
            n.Literal: self.literal, n.Interpolated: self.interpolated, n.Name: self.name,
            n.TypeName: self.type_name, n.Member: self.member, n.Call: self.call,
            n.Index: self.index, n.ConditionalAccess: self.conditional_access,
            n.Binding: self.binding, n.Unary: self.unary, n.Binary: self.binary,
            n.Conditional: self.conditional, n.Cast: self.cast, n.IsType: self.is_type,
            n.AsType: self.as_type, n.NewArray: self.new_array, n.Lambda: self.lambda_value,
        }

    # -- plumbing ------------------------------------------------------------------------

    def _slot_getter(self, slot: int) -> Callable:
        getter = itemgetter(slot)
        self.getters[id(getter)] = slot
        self._keep.append(getter)       # (ids stay unique while the compiler lives)
        return getter

    def new_slot(self) -> int:
        self.slots += 1
        return self.slots - 1

    def target(self, node: n.Node) -> V | _TypeTarget | _Namespace:
        handler = self.dispatch.get(type(node))
        if handler is None:
            raise error(node, "this is not an expression")
        return handler(node)  # type: ignore[return-value]

    def expr(self, node: n.Node) -> V:
        result = self.target(node)
        if isinstance(result, _TypeTarget):
            raise error(node, f"'{result.name}' is a type, which is not valid here")
        if isinstance(result, _Namespace):
            raise error(node, f"'{result.path}' is a namespace, which is not valid here")
        return result

    def lookup_local(self, name: str) -> _Local | None:
        for scope in reversed(self.scopes):
            local = scope.get(name)
            if local is not None:
                return local
        return None

    def declare(self, name: str, type_: TypeRef, node: n.Node, line: int, col: int) -> _Local:
        if name == "context":
            raise PolicyExpressionError("'context' cannot be redeclared", line, col)
        if self.lookup_local(name) is not None:
            raise PolicyExpressionError(
                f"a local variable or parameter named '{name}' is already defined in this "
                "scope", line, col)
        local = _Local(self.new_slot(), type_, name)
        self.scopes[-1][name] = local
        return local

    def resolve_type(self, syntax: n.TypeSyntax) -> TypeRef:
        name = syntax.name
        if name.startswith("global::"):
            name = name[len("global::"):]
        short = name
        if "." in name:
            namespace, _, short = name.rpartition(".")
            if short not in rt.NAMESPACES.get(namespace, ()):
                raise error(syntax, f"unknown type '{name}'")
        typedef = rt.TYPE_NAMES.get(short)
        if typedef is None or typedef.static_only:
            if short in ("var", "dynamic"):
                raise error(syntax, f"'{short}' is not allowed here")
            if short in ("float", "decimal", "short", "ushort", "uint", "ulong", "sbyte"):
                raise error(syntax, f"the type '{short}' is not supported in policy expressions")
            raise error(syntax, f"unknown type '{name}'")
        args = tuple(self.resolve_type(arg) for arg in syntax.args)
        if len(args) != typedef.arity:
            raise error(syntax, f"the type '{short}' needs {typedef.arity} type argument(s)")
        result = TypeRef(typedef, args)
        if syntax.nullable:
            if not typedef.value_type:
                raise error(syntax, f"'{short}?' is not supported: '{short}' can be null "
                                    "already")
            result = t.nullable(result)
        for _ in range(syntax.array_rank):
            result = t.array_of(result)
        return result

    def convert(self, value: V, target: TypeRef, node: n.Node, what: str = "") -> Callable:
        """The closure of ``value`` implicitly converted to ``target``, or a compile error."""
        if not t.assignable(value.type, target):
            raise error(node, f"cannot implicitly convert type '{value.type}' to "
                              f"'{target}'{what}")
        return ops.coerce(value, target)

    def condition(self, node: n.Node) -> Callable:
        value = self.expr(node)
        if value.type.d is not t.BOOL_DEF:
            raise error(node, f"cannot implicitly convert type '{value.type}' to 'bool'")
        return value.fn

    # -- simple expressions --------------------------------------------------------------

    def literal(self, node: n.Literal) -> V:
        kind = node.kind
        value = node.value
        if kind == "null":
            return V(_const(None), NULL)
        if kind == "char":
            value = v.Char(value)
        elif kind == "double":
            value = float(value)  # type: ignore[arg-type]
        type_ = {"string": STRING, "char": t.CHAR, "int": t.INT, "long": t.LONG,
                 "double": t.DOUBLE, "bool": BOOL}[kind]
        if kind == "int" and not rt.INT_MIN <= value <= rt.INT_MAX:  # type: ignore[operator]
            type_ = t.LONG
        return V(_const(value), type_, True)

    def interpolated(self, node: n.Interpolated) -> V:
        pieces: list[Callable] = []
        for part in node.parts:
            if isinstance(part, str):
                pieces.append(_const(part))
                continue
            value = self.expr(part.expr)
            fn, fmt, alignment = value.fn, part.format, part.alignment
            if alignment is not None and abs(alignment) > rt.MAX_STRING_LENGTH:
                raise error(part, "alignment is too large")
            if fmt is None and alignment is None:
                if value.type.d is t.STRING_DEF:
                    pieces.append(lambda f, fn=fn: fn(f) or "")
                else:
                    pieces.append(lambda f, fn=fn: to_string(fn(f)))
            else:
                pieces.append(lambda f, fn=fn, fmt=fmt, alignment=alignment:
                              align(format_value(fn(f), fmt), alignment))
        if len(pieces) == 1:
            only = pieces[0]
            return V(only, STRING, True)
        return V(lambda f: "".join([piece(f) for piece in pieces]), STRING, True)

    def name(self, node: n.Name) -> V | _TypeTarget | _Namespace:
        local = self.lookup_local(node.name)
        if local is not None:
            return V(self._slot_getter(local.slot), local.type)
        if node.name == "context":
            return V(self._slot_getter(0), self.context_type, True)
        typedef = rt.TYPE_NAMES.get(node.name)
        if typedef is not None and typedef.arity == 0:
            return _TypeTarget(typedef, rt.KEYWORD_ALIASES.get(node.name, node.name))
        if node.name in rt.NAMESPACES:
            return _Namespace(node.name)
        raise error(node, f"the name '{node.name}' does not exist in the current context")

    def type_name(self, node: n.TypeName) -> _TypeTarget:
        typedef = rt.TYPE_NAMES.get(node.name)
        if typedef is None:
            raise error(node, f"the type '{node.name}' is not supported in policy expressions")
        return _TypeTarget(typedef, node.name)

    # -- members -------------------------------------------------------------------------

    def member(self, node: n.Member) -> V | _TypeTarget | _Namespace:
        receiver = self.target(node.target)
        name = node.name
        if node.type_args is not None:
            raise error(node, f"'{name}' with type arguments must be called: {name}<...>()")
        if isinstance(receiver, _Namespace):
            path = receiver.path + "." + name
            if path in rt.NAMESPACES:
                return _Namespace(path)
            if name in rt.NAMESPACES[receiver.path]:
                return _TypeTarget(rt.TYPE_NAMES[name], rt.KEYWORD_ALIASES.get(name, name))
            raise error(node, f"the type or namespace '{name}' does not exist in "
                              f"'{receiver.path}'")
        if isinstance(receiver, _TypeTarget):
            static = t.find_static(receiver.typedef, name)
            if isinstance(static, t.Property):
                self._note(static.reads)
                type_ = static.type if isinstance(static.type, TypeRef) else \
                    t.resolve(static.type, Site(None))
                get = static.get
                return V(shaped(lambda f: get(), "{0}()", Value(get)), type_ or OBJECT, True)
            if isinstance(static, list):
                raise error(node, f"'{receiver.name}.{name}' is a method; call it with ()")
            raise error(node, f"unknown member '{name}' on {receiver.name}")
        prop = t.find_property(receiver.type, name)
        if prop is None:
            if t.find_methods(receiver.type, name):
                raise error(node, f"'{name}' is a method; call it with ()")
            raise error(node, f"unknown member '{name}' on {_type_label(receiver.type)}")
        self._note(prop.reads)
        site = Site(receiver.type)
        try:
            type_ = t.resolve(prop.type, site) or OBJECT
        except MemberUseError as exc:
            raise error(node, str(exc)) from None
        get = prop.get
        recv = receiver.fn
        if receiver.view_of is not None and prop.through is not None:
            # context.Request.Certificate read as context.certificate: no view made
            get, recv = prop.through, receiver.view_of
        if _needs_check(receiver):
            return V(_checked_call(get, recv), type_, prop.non_null)
        return V(shaped(lambda f: get(recv(f)), "{0}({1})", Value(get), recv), type_,
                 prop.non_null, recv if prop.view else None)

    def _note(self, reads: str | None) -> None:
        if reads:
            self.reads.add(reads)

    def index(self, node: n.Index) -> V:
        receiver = self.expr(node.target)
        indexer = _find_indexer(receiver.type.d)
        if indexer is None:
            raise error(node, f"cannot apply indexing with [] to an expression of type "
                              f"'{receiver.type}'")
        if len(node.args) != 1:
            raise error(node, "indexers take exactly one argument here")
        site = Site(receiver.type)
        key_type = t.resolve(indexer.key, site) or OBJECT
        key = self.expr(node.args[0])
        key_fn = self.convert(key, key_type, node.args[0])
        result = t.resolve(indexer.result, site) or OBJECT
        impl = indexer.impl
        recv = _check_receiver(receiver.fn, False) if _needs_check(receiver) else receiver.fn
        return V(lambda f: impl(recv(f), key_fn(f)), result)

    def conditional_access(self, node: n.ConditionalAccess) -> V:
        receiver = self.expr(node.target)
        if not t.can_be_null(receiver.type) or receiver.type.d is t.NULL_DEF:
            if receiver.type.d is t.NULL_DEF:
                raise error(node, "'?.' cannot be applied to null")
            raise error(node, f"'?.' cannot be applied to a value of type '{receiver.type}', "
                              "which is never null")
        slot = self.new_slot()
        self.bindings.append((slot, t.underlying(receiver.type)))
        try:
            body = self.expr(node.body)
        finally:
            self.bindings.pop()
        recv, run = receiver.fn, body.fn

        def access(f):
            value = recv(f)
            if value is None:
                return None
            f[slot] = value
            return run(f)
        result = t.nullable(body.type) if body.type.d.value_type else body.type
        return V(access, result)

    def binding(self, node: n.Binding) -> V:
        slot, type_ = self.bindings[-1]
        return V(itemgetter(slot), type_, True)

    # -- calls ---------------------------------------------------------------------------

    def call(self, node: n.Call) -> V:
        callee = node.callee
        if not isinstance(callee, n.Member):
            if isinstance(callee, n.Name):
                if self.lookup_local(callee.name) is not None:
                    raise error(callee, f"'{callee.name}' is a variable, not a method")
                raise error(callee, f"the name '{callee.name}' does not exist in the current "
                                    "context")
            raise error(callee, "this expression cannot be called")
        receiver = self.target(callee.target)
        name = callee.name
        type_args = [self.resolve_type(arg) for arg in callee.type_args or []]
        if isinstance(receiver, _Namespace):
            raise error(callee, f"the type or namespace '{name}' does not exist in "
                                f"'{receiver.path}'")
        if isinstance(receiver, _TypeTarget):
            static = t.find_static(receiver.typedef, name)
            if static is None:
                raise error(callee, f"unknown member '{name}' on {receiver.name}")
            if not isinstance(static, list):
                raise error(callee, f"'{receiver.name}.{name}' is a property, not a method")
            return self.invoke(static, None, None, node, callee, type_args)
        methods = t.find_methods(receiver.type, name)
        if not methods:
            if t.find_property(receiver.type, name) is not None:
                raise error(callee, f"'{name}' is a property, not a method")
            raise error(callee, f"unknown member '{name}' on {_type_label(receiver.type)}")
        return self.invoke(methods, receiver, receiver.type, node, callee, type_args)

    def invoke(self, methods: list[Method], receiver: V | None, receiver_type: TypeRef | None,
               node: n.Call, callee: n.Member, type_args: list[TypeRef]) -> V:
        args = node.args
        values: list[V | None] = [None if isinstance(a.value, n.Lambda) else self.expr(a.value)
                                  for a in args]
        name = callee.name
        first_error: PolicyExpressionError | None = None
        chosen = None
        for method in methods:
            if type_args and method.generic != len(type_args):
                continue
            if not type_args and method.generic and method.bind is not None and \
                    not method.params:
                continue  # OfType<T>() and the like need their type argument
            mapping = _map_arguments(method, args)
            if mapping is None:
                continue
            site = Site(receiver_type, list(type_args))
            problem = self._check_arguments(method, mapping, args, values, site)
            if problem is None:
                chosen = (method, mapping, site)
                break
            first_error = first_error or problem
        if chosen is None:
            if first_error is not None:
                raise first_error
            if type_args and not any(m.generic == len(type_args) for m in methods):
                raise error(callee, f"'{name}' cannot be used with type arguments"
                            if not any(m.generic for m in methods) else
                            f"'{name}' takes {max(m.generic for m in methods)} type argument(s)")
            if any(m.generic for m in methods) and not type_args and \
                    all(m.generic and not m.params for m in methods):
                raise error(callee, f"'{name}' needs a type argument: {name}<T>()")
            lambdas = sum(isinstance(a.value, n.Lambda) for a in args)
            detail = f" ({lambdas} of them lambdas)" if lambdas else ""
            raise error(callee, f"no overload of '{name}' takes {len(args)} "
                                f"argument{'s' if len(args) != 1 else ''}{detail}")
        method, mapping, site = chosen
        self._note(method.reads)
        arg_fns = self._argument_closures(method, mapping, args, values, site)
        try:
            result = t.resolve(method.returns, site)
        except MemberUseError as exc:
            raise error(callee, str(exc)) from None
        if result is None:
            raise error(callee, f"'{name}' cannot be used on "
                                f"'{receiver_type if receiver_type else 'this type'}' here")
        impl = method.bind(site) if method.bind is not None else method.impl
        if receiver is None:
            return V(_static_call(impl, arg_fns), result)
        if _needs_check(receiver):
            if not arg_fns and not method.extension:
                return V(_checked_call(impl, receiver.fn), result)
            recv = _check_receiver(receiver.fn, method.extension)
        else:
            recv = receiver.fn
        return V(_instance_call(impl, recv, arg_fns), result)

    def _check_arguments(self, method: Method, mapping: list, args: list[n.Argument],
                         values: list[V | None], site: Site) -> PolicyExpressionError | None:
        """None when the arguments fit ``method``; else the error to report. Fills
        ``site.args`` with the argument types by parameter index."""
        site.args = [None] * len(method.params)
        for index, param in enumerate(method.params):
            slot = mapping[index]
            if slot is None:
                continue
            if param.variadic:
                single = values[slot[0]] if len(slot) == 1 else None
                if single is not None and single.type.d is not t.NULL_DEF and \
                        t.assignable(single.type, t.array_of(_param_type(param, site))):
                    site.args[index] = values[slot[0]].type  # type: ignore[union-attr]
                    continue
                element = _param_type(param, site)
                for arg_index in slot:
                    value = values[arg_index]
                    if value is None:
                        return error(args[arg_index], "a lambda is not allowed here")
                    if element is not None and not t.assignable(value.type, element):
                        return _argument_error(method, arg_index, args, value.type, element)
                continue
            arg_index = slot
            value = values[arg_index]
            if param.lambda_params is not None:
                if value is not None:
                    return error(args[arg_index], f"argument {arg_index + 1} of "
                                                  f"'{method.name}' must be a lambda")
                lam = args[arg_index].value
                assert isinstance(lam, n.Lambda)
                if param.lambda_params(site, len(lam.params)) is None:
                    return error(lam, f"'{method.name}' does not take a lambda with "
                                      f"{len(lam.params)} parameter(s)")
                site.lambda_arity[index] = len(lam.params)
                continue
            if value is None:
                return error(args[arg_index], f"argument {arg_index + 1} of '{method.name}' "
                                              "cannot be a lambda")
            site.args[index] = value.type
            try:
                expected = _param_type(param, site)
            except MemberUseError as exc:
                return error(args[arg_index], str(exc))
            if expected is not None and not t.assignable(value.type, expected):
                return _argument_error(method, arg_index, args, value.type, expected)
        return None

    def _argument_closures(self, method: Method, mapping: list, args: list[n.Argument],
                           values: list[V | None], site: Site) -> list[Callable]:
        closures: list[Callable] = []
        for index, param in enumerate(method.params):
            slot = mapping[index]
            if slot is None:
                if param.variadic:
                    closures.append(lambda f: [])
                    continue
                closures.append(_const(param.default))
                continue
            if param.variadic:
                element = _param_type(param, site) or OBJECT
                if len(slot) == 1 and site.args[index] is not None:
                    array = values[slot[0]].fn  # type: ignore[union-attr]
                    closures.append(lambda f, array=array, name=param.name:
                                    _not_null(array(f), name))
                    continue
                items = [ops.coerce(values[i], element) for i in slot]  # type: ignore[arg-type]
                closures.append(lambda f, items=items: [item(f) for item in items])
                continue
            if param.lambda_params is not None:
                lam = args[slot].value
                assert isinstance(lam, n.Lambda)
                param_types = param.lambda_params(site, len(lam.params)) or []
                factory, body_type = self.lambda_(lam, param_types, param.lambda_returns, site)
                site.lambda_results[index] = body_type
                closures.append(factory)
                continue
            value = values[slot]
            assert value is not None
            expected = _param_type(param, site)
            closures.append(ops.coerce(value, expected) if expected is not None else value.fn)
        return closures

    def lambda_(self, node: n.Lambda, param_types: list[TypeRef], returns: t.TypeLike,
                site: Site) -> tuple[Callable, TypeRef]:
        """A lambda argument: a closure that makes the Python callable, and the body type."""
        self.scopes.append({})
        try:
            slots = []
            for (name, line, col), type_ in zip(node.params, param_types, strict=True):
                slots.append(self.declare(name, type_, node, line, col).slot)
            if isinstance(node.body, n.Block):
                self.returns.append([])
                run, always = self.statements(node.body.statements)
                kinds = self.returns.pop()
                if not always:
                    raise PolicyExpressionError("not all code paths of the lambda return a "
                                                "value", *node.body.end)
                body_type = common_return_type(kinds)
                body = run
            else:
                value = self.expr(node.body)
                body_type = value.type
                body = value.fn
        finally:
            self.scopes.pop()
        expected = t.resolve(returns, site)
        if expected is not None:
            if not t.assignable(body_type, expected):
                where = node if isinstance(node.body, n.Block) else node.body
                raise PolicyExpressionError(
                    f"the lambda must return '{expected}', not '{body_type}'", *n.start_of(where))
        if len(slots) == 1:
            s0 = slots[0]

            def factory(f):
                def call(x):
                    f[s0] = x
                    return body(f)
                return call
        elif len(slots) == 2:
            s0, s1 = slots

            def factory(f):
                def call(x, y):
                    f[s0] = x
                    f[s1] = y
                    return body(f)
                return call
        else:
            def factory(f):
                return lambda: body(f)
        return factory, body_type

    def lambda_value(self, node: n.Lambda) -> V:
        raise error(node, "a lambda expression is only allowed as a method argument "
                          "(Any(c => ...))")

    # -- operators -----------------------------------------------------------------------

    def unary(self, node: n.Unary) -> V:
        return ops.unary(node.op, self.expr(node.operand), node)

    def binary(self, node: n.Binary) -> V:
        if node.op == "??":
            return self.coalesce(node)
        left = self.expr(node.left)
        right = self.expr(node.right)
        return ops.binary(node.op, left, right, node)

    def coalesce(self, node: n.Binary) -> V:
        left = self.expr(node.left)
        right = self.expr(node.right)
        lt, rt_ = left.type, right.type
        if not t.can_be_null(lt):
            raise error(node, f"operator '??' cannot be applied to operands of type '{lt}' "
                              f"and '{rt_}'")
        if lt.d is t.NULL_DEF:
            return right
        base = t.underlying(lt)
        if t.is_nullable(lt) and t.assignable(rt_, base):
            result = base
        elif t.assignable(rt_, lt):
            result = lt
        elif t.assignable(lt, rt_):
            result = rt_
        else:
            raise error(node, f"operator '??' cannot be applied to operands of type '{lt}' "
                              f"and '{rt_}'")
        a = ops.coerce(left, result)
        b = ops.coerce(right, result)

        def run(f):
            value = a(f)
            return b(f) if value is None else value
        return V(run, result, right.non_null)

    def conditional(self, node: n.Conditional) -> V:
        test = self.condition(node.condition)
        then = self.expr(node.then)
        otherwise = self.expr(node.otherwise)
        result = common_type(then.type, otherwise.type)
        if result is None:
            raise error(node, "type of conditional expression cannot be determined because "
                              f"there is no implicit conversion between '{then.type}' and "
                              f"'{otherwise.type}'")
        a = ops.coerce(then, result)
        b = ops.coerce(otherwise, result)
        return V(lambda f: a(f) if test(f) else b(f), result, then.non_null and otherwise.non_null)

    # -- casts and type tests ------------------------------------------------------------

    def cast(self, node: n.Cast) -> V:
        target = self.resolve_type(node.type)
        value = self.expr(node.operand)
        fn = cast_closure(value, target)
        if fn is None:
            raise error(node, f"cannot convert type '{value.type}' to '{target}'")
        return V(fn, target, value.non_null)

    def is_type(self, node: n.IsType) -> V:
        value = self.expr(node.operand)
        fn = value.fn
        if node.type is None:
            if not t.can_be_null(value.type):
                return V(_const(node.negated), BOOL, True)
            if node.negated:
                return V(lambda f: fn(f) is not None, BOOL)
            return V(lambda f: fn(f) is None, BOOL)
        target = self.resolve_type(node.type)
        check = v.is_instance
        if node.negated:
            return V(lambda f: not check(fn(f), target), BOOL)
        return V(lambda f: check(fn(f), target), BOOL)

    def as_type(self, node: n.AsType) -> V:
        target = self.resolve_type(node.type)
        if not t.can_be_null(target):
            raise error(node, f"the 'as' operator needs a reference or nullable type, not "
                              f"'{target}'")
        value = self.expr(node.operand)
        fn = value.fn
        check = v.is_instance

        def run(f):
            item = fn(f)
            return item if check(item, target) else None
        return V(run, target)

    def new_array(self, node: n.NewArray) -> V:
        items = [self.expr(item) for item in node.items]
        if node.element is not None:
            element = self.resolve_type(node.element)
        else:
            element = None
            for item in items:
                element = item.type if element is None else common_type(element, item.type)
                if element is None:
                    raise error(node, "no best type found for the implicitly-typed array")
            if element is None or element.d is t.NULL_DEF:
                raise error(node, "no best type found for the implicitly-typed array")
        fns = [self.convert(item, element, syntax)
               for item, syntax in zip(items, node.items, strict=True)]
        return V(lambda f: [fn(f) for fn in fns], t.array_of(element), True)

    # -- statements ----------------------------------------------------------------------

    def top_block(self, block: n.Block) -> tuple[Callable, TypeRef]:
        self.returns.append([])
        run, always = self.statements(block.statements)
        kinds = self.returns.pop()
        if not always:
            raise PolicyExpressionError("not all code paths return a value: end the block with "
                                        "'return ...;'", *block.end)
        return run, common_return_type(kinds)

    def statements(self, statements: list[n.Node]) -> tuple[Callable, bool]:
        """A closure running ``statements`` (value of a ``return``, or NOTHING) and whether
        every path through them returns."""
        compiled: list[Callable] = []
        always = False
        self.scopes.append({})
        try:
            for statement in statements:
                fn, returns = self.statement(statement)
                if fn is not None:
                    compiled.append(fn)
                if returns:
                    always = True
                    break  # the rest is unreachable
        finally:
            self.scopes.pop()
        if len(compiled) == 1:
            return compiled[0], always
        nothing = NOTHING

        def run(f):
            for step in compiled:
                result = step(f)
                if result is not nothing:
                    return result
            return nothing
        return run, always

    def statement(self, node: n.Node) -> tuple[Callable | None, bool]:
        if isinstance(node, n.Return):
            if node.value is None:
                raise error(node, "'return' needs a value here")
            value = self.expr(node.value)
            if value.type.d is t.NULL_DEF:
                self.returns[-1].append(OBJECT)
            else:
                self.returns[-1].append(value.type)
            return value.fn, True
        if isinstance(node, n.Block):
            return self.statements(node.statements)
        if isinstance(node, n.If):
            return self.if_statement(node)
        if isinstance(node, n.VarDecl):
            return self.declaration(node), False
        if isinstance(node, n.Assign):
            return self.assignment(node), False
        if isinstance(node, n.ExprStatement):
            fn = self.expr(node.expr).fn
            nothing = NOTHING

            def run(f):
                fn(f)
                return nothing
            return run, False
        if isinstance(node, n.Empty):
            return None, False
        raise error(node, "unsupported statement")  # pragma: no cover

    def if_statement(self, node: n.If) -> tuple[Callable, bool]:
        test = self.condition(node.condition)
        then, then_returns = self._scoped(node.then)
        if node.otherwise is None:
            otherwise, else_returns = None, False
        else:
            otherwise, else_returns = self._scoped(node.otherwise)
        nothing = NOTHING
        then_fn = then or (lambda f: nothing)
        if otherwise is None:
            return (lambda f: then_fn(f) if test(f) else nothing), False
        else_fn = otherwise
        return (lambda f: then_fn(f) if test(f) else else_fn(f)), then_returns and else_returns

    def _scoped(self, node: n.Node) -> tuple[Callable | None, bool]:
        self.scopes.append({})
        try:
            return self.statement(node)
        finally:
            self.scopes.pop()

    def declaration(self, node: n.VarDecl) -> Callable:
        steps: list[tuple[int, Callable]] = []
        for declarator in node.declarators:
            if node.type is None:
                assert declarator.value is not None
                if isinstance(declarator.value, n.Lambda):
                    raise error(declarator.value, "cannot assign a lambda expression to an "
                                                  "implicitly-typed variable")
                value = self.expr(declarator.value)
                if value.type.d is t.NULL_DEF:
                    raise error(declarator.value, "cannot assign <null> to an implicitly-typed "
                                                  "variable")
                type_ = value.type
                fn = value.fn
            else:
                type_ = self.resolve_type(node.type)
                if declarator.value is None:
                    fn = _const(v.default_of(type_))
                else:
                    value = self.expr(declarator.value)
                    fn = self.convert(value, type_, declarator.value)
            local = self.declare(declarator.name, type_, declarator, declarator.line,
                                 declarator.col)
            steps.append((local.slot, fn))
        nothing = NOTHING
        if len(steps) == 1:
            slot, fn = steps[0]

            def assign_one(f):
                f[slot] = fn(f)
                return nothing
            return assign_one

        def assign_all(f):
            for slot, fn in steps:
                f[slot] = fn(f)
            return nothing
        return assign_all

    def assignment(self, node: n.Assign) -> Callable:
        target = node.target
        if not isinstance(target, n.Name) or self.lookup_local(target.name) is None:
            if isinstance(target, n.Name) and target.name == "context":
                raise error(target, "'context' cannot be assigned")
            if isinstance(target, (n.Member, n.Index)):
                raise PolicyExpressionError("only local variables can be assigned in policy "
                                    "expressions (use <set-variable> for context.Variables)",
                                            *n.start_of(target))
            if isinstance(target, n.Name):
                raise error(target, f"the name '{target.name}' does not exist in the current "
                                    "context")
            raise error(target, "the left-hand side of an assignment must be a variable")
        local = self.lookup_local(target.name)
        assert local is not None
        if node.op == "=":
            value = self.expr(node.value)
        else:
            value = ops.binary(node.op[0], V(itemgetter(local.slot), local.type),
                               self.expr(node.value), node)
        fn = self.convert(value, local.type, node.value)
        slot = local.slot
        nothing = NOTHING

        def assign(f):
            f[slot] = fn(f)
            return nothing
        return assign


# -- helpers -------------------------------------------------------------------------------


def _not_null(value: object, parameter: str) -> object:
    if value is None:
        raise argument_null(parameter)
    return value


def _type_label(type_: TypeRef) -> str:
    return str(type_)


def _find_indexer(typedef: t.TypeDef) -> t.Indexer | None:
    current: t.TypeDef | None = typedef
    while current is not None:
        if current.indexer is not None:
            return current.indexer
        current = current.base
    return None


def _param_type(param: Param, site: Site) -> TypeRef | None:
    return t.resolve(param.type, site)


def _argument_error(method: Method, index: int, args: list[n.Argument], source: TypeRef,
                    expected: TypeRef) -> PolicyExpressionError:
    return error(args[index], f"argument {index + 1} of '{method.name}': cannot convert from "
                              f"'{source}' to '{expected}'")


def _map_arguments(method: Method, args: list[n.Argument]) -> list | None:
    """For each parameter: the index of its argument, a list of indexes (variadic), or None
    (omitted). None overall when the arguments do not fit the parameters."""
    params = method.params
    mapping: list = [None] * len(params)
    position = 0
    for arg_index, arg in enumerate(args):
        if arg.name is not None:
            for index, param in enumerate(params):
                if param.name == arg.name:
                    if mapping[index] is not None or param.variadic:
                        return None
                    mapping[index] = arg_index
                    break
            else:
                return None
            continue
        if any(a.name is not None for a in args[:arg_index]):
            return None  # positional after named
        if position >= len(params):
            return None
        param = params[position]
        if param.variadic:
            if mapping[position] is None:
                mapping[position] = []
            mapping[position].append(arg_index)
            continue
        mapping[position] = arg_index
        position += 1
    for index, param in enumerate(params):
        if mapping[index] is None and not param.optional and not param.variadic:
            return None
    return mapping


def _instance_call(impl: Callable, recv: Callable, args: list[Callable]) -> Callable:
    count = len(args)
    if count == 0:
        return shaped(lambda f: impl(recv(f)), "{0}({1})", Value(impl), recv)
    if count == 1:
        a0 = args[0]
        return shaped(lambda f: impl(recv(f), a0(f)), "{0}({1}, {2})", Value(impl), recv, a0)
    if count == 2:
        a0, a1 = args
        return shaped(lambda f: impl(recv(f), a0(f), a1(f)), "{0}({1}, {2}, {3})",
                      Value(impl), recv, a0, a1)
    return lambda f: impl(recv(f), *[a(f) for a in args])


def _checked_call(impl: Callable, recv: Callable) -> Callable:
    """``x.P`` or ``x.M()`` on a receiver that may be null (``cert.Thumbprint``,
    ``cert.Verify()``): the null check inline, one closure call rather than two."""
    def call(f):
        value = recv(f)
        if value is None:
            raise null_reference()
        return impl(value)
    return shaped(call, "({0}({t}) if ({t} := {1}) is not None else {2}())", Value(impl), recv,
                  Value(_raise_null_reference))


def _static_call(impl: Callable, args: list[Callable]) -> Callable:
    count = len(args)
    if count == 0:
        return shaped(lambda f: impl(), "{0}()", Value(impl))
    if count == 1:
        a0 = args[0]
        return shaped(lambda f: impl(a0(f)), "{0}({1})", Value(impl), a0)
    if count == 2:
        a0, a1 = args
        return shaped(lambda f: impl(a0(f), a1(f)), "{0}({1}, {2})", Value(impl), a0, a1)
    return lambda f: impl(*[a(f) for a in args])
