"""What expression text may contain (`parse`): the syntax mapped to the op table's names, and for what is refused,
why and what to write instead."""

from __future__ import annotations

import ast

from ..ops import BINOPS, FUNCTIONS

__all__: list[str] = []  # (the parser's tables: read by `parse` only)

_BINOP_NAMES = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow", ast.Mod: "mod"}
_UNARY_NAMES = {ast.USub: "neg", ast.UAdd: "pos"}
_CMP_NAMES = {ast.Gt: "gt", ast.GtE: "ge", ast.Lt: "lt", ast.LtE: "le", ast.Eq: "eq", ast.NotEq: "ne"}
_BAD_BINOPS = {
    ast.FloorDiv: ("'//'", "use floor(a / b)"),
    ast.MatMult: ("'@'", "expressions are scalar; use * for products"),
    ast.BitAnd: ("'&'", "use where(...) with one comparison"),
    ast.BitOr: ("'|'", "use where(...) with one comparison"),
    ast.BitXor: ("'^'", "write powers as a ** b"),
    ast.LShift: ("'<<'", "write a * 2**n"),
    ast.RShift: ("'>>'", "write a / 2**n"),
}
# Why each kind of syntax is refused, and what to write instead.
_REJECTED: dict[type, tuple[str, str]] = {
    ast.Attribute: ("attribute access is not allowed", "call functions by name, e.g. sin(x) rather than torch.sin(x)"),
    ast.Subscript: ("subscripts are not allowed", "each variable is a scalar; give separate names such as x0, x1"),
    ast.Lambda: ("lambda is not allowed", "write the expression itself"),
    ast.ListComp: ("comprehensions are not allowed", "write the expression out, e.g. x1 + x2 + x3"),
    ast.SetComp: ("comprehensions are not allowed", "write the expression out, e.g. x1 + x2 + x3"),
    ast.DictComp: ("comprehensions are not allowed", "write the expression out, e.g. x1 + x2 + x3"),
    ast.GeneratorExp: ("comprehensions are not allowed", "write the expression out, e.g. x1 + x2 + x3"),
    ast.IfExp: ("conditional expressions are not supported", "use where(condition, a, b)"),
    ast.BoolOp: ("'and' / 'or' are not supported", "use where(...) with one comparison"),
    ast.Tuple: ("tuples are not allowed", "give one scalar expression"),
    ast.List: ("lists are not allowed", "give one scalar expression"),
    ast.Set: ("sets are not allowed", "give one scalar expression"),
    ast.Dict: ("dicts are not allowed", "give one scalar expression"),
    ast.NamedExpr: ("assignment expressions are not allowed", "give one expression"),
    ast.JoinedStr: ("strings are not allowed", "give a numeric expression"),
    ast.Starred: ("starred arguments are not allowed", "pass arguments one by one"),
    ast.Await: ("'await' is not allowed", "give a numeric expression"),
    ast.Yield: ("'yield' is not allowed", "give a numeric expression"),
    ast.YieldFrom: ("'yield' is not allowed", "give a numeric expression"),
}


def _example_call(name: str) -> str:
    op = FUNCTIONS.get(name)
    if op is None:
        return "sin(x)"
    names = ["x", "y", "z"] if name != "where" else ["x > 0", "a", "b"]
    if name == "clamp":
        names = ["x", "0", "1"]
    if name in BINOPS:
        return f"{name}(x, y)"
    return f"{name}(" + ", ".join(names[: op.arity[1] if op.arity[0] > 1 else op.arity[0]]) + ")"
