"""The names sympy prints, read as our functions: pasting ``str(expr)`` works.

sympy writes ``Abs(x)``, ``Max(x, y)``, ``Heaviside(x)``, ``Piecewise((x, x > 0), (0, True))``,
``log(x, 2)``, ``re(x)``; the parser's vocabulary is torch's (``abs``, ``max``, ``where``...).
This pass rewrites the syntax tree, before the parser's whitelist walk sees it, into calls the op
table has -- it adds no function of its own, so every rewritten call is checked exactly like the
same call written by hand.  It never evaluates text: it only moves syntax-tree nodes.

The walk has no recursion (the parser reads trees far deeper than Python's recursion limit).
"""

from __future__ import annotations

import ast
import re
from typing import Callable

__all__ = ["RENAMED", "rewrite_sympy_names"]

# sympy's name -> ours, for the functions that differ only by name
RENAMED = {"Abs": "abs", "Max": "max", "Min": "min", "ceiling": "ceil", "loggamma": "lgamma"}
_SPECIAL = ("Heaviside", "Piecewise", "re", "im", "log")
_MENTIONS = re.compile(r"\b(?:" + "|".join(list(RENAMED) + list(_SPECIAL)) + r")\s*\(")

Error = Callable[[str, ast.AST, str], Exception]


def rewrite_sympy_names(tree: ast.Expression, source: str, error: Error) -> ast.Expression:
    """`tree` with sympy's printed names rewritten into the op table's calls (in place where it can)."""
    if not _MENTIONS.search(source):
        return tree
    order: list[ast.AST] = []
    stack: list[ast.AST] = [tree.body]
    while stack:  # pre-order: a node before its descendants
        node = stack.pop()
        order.append(node)
        stack.extend(ast.iter_child_nodes(node))
    new: dict[int, ast.AST] = {}
    for node in reversed(order):  # descendants first: a parent sees its children's rewritten forms
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.AST) and id(value) in new:
                setattr(node, field, new[id(value)])
            elif isinstance(value, list):
                setattr(node, field, [new.get(id(v), v) for v in value])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            out = _rewrite(node, error)
            if out is not node:
                new[id(node)] = out
    tree.body = new.get(id(tree.body), tree.body)  # type: ignore[assignment]
    return tree


def _rewrite(call: ast.Call, error: Error) -> ast.AST:
    name, args = call.func.id, call.args  # type: ignore[attr-defined]

    def at(node: ast.AST) -> ast.AST:
        return ast.copy_location(node, call)

    def fn(n: str, *a: ast.AST) -> ast.AST:
        return at(ast.Call(func=at(ast.Name(id=n, ctx=ast.Load())), args=list(a), keywords=[]))

    def num(v: float) -> ast.AST:
        return at(ast.Constant(value=v))

    def compare(x: ast.AST, op: ast.cmpop, v: float) -> ast.AST:
        return at(ast.Compare(left=x, ops=[op], comparators=[num(v)]))

    if name in RENAMED:
        return fn(RENAMED[name], *args)
    if name == "log" and len(args) == 2:  # sympy's log(x, b) is log(x)/log(b)
        return at(ast.BinOp(left=fn("log", args[0]), op=ast.Div(), right=fn("log", args[1])))
    if name == "re" and len(args) == 1:  # the inputs are real: re(x) is x, im(x) is 0
        return args[0]
    if name == "im" and len(args) == 1:
        return at(ast.BinOp(left=num(0), op=ast.Mult(), right=args[0]))
    if name == "Heaviside" and len(args) in (1, 2):
        # sympy's Heaviside(0) is 1/2 unless a second argument says otherwise (torch.heaviside's `values`)
        x, h0 = args[0], args[1] if len(args) == 2 else num(0.5)
        return fn("where", compare(x, ast.Gt(), 0), num(1), fn("where", compare(x, ast.Lt(), 0), num(0), h0))
    if name == "Piecewise":
        return _piecewise(call, args, fn, error)
    return call


def _piecewise(call: ast.Call, args: list[ast.AST], fn: Callable[..., ast.AST], error: Error) -> ast.AST:
    pieces = []
    for a in args:
        if not (isinstance(a, ast.Tuple) and len(a.elts) == 2):
            raise error("each argument of Piecewise must be a pair (value, condition)", a,
                        "write e.g. Piecewise((x, x > 0), (0, True))")
        pieces.append((a.elts[0], a.elts[1]))
    if not pieces or not (isinstance(pieces[-1][1], ast.Constant) and pieces[-1][1].value is True):
        raise error("Piecewise must end with an otherwise piece (value, True): without it the value is "
                    "undefined where no condition holds", call, "add a last piece, e.g. (0, True)")
    out = pieces[-1][0]
    for value, cond in reversed(pieces[:-1]):
        if isinstance(cond, ast.Constant):
            raise error("only the last piece of Piecewise may have the condition True", cond,
                        "move it to the end, or remove the pieces after it")
        out = fn("where", cond, value, out)
    return out
