"""An expression reader without recursion, for expressions nested too deeply for `ast.parse`.

Python's parser builds its syntax tree recursively and stops at about three times the
interpreter's recursion limit (~2,900 levels at the default 1,000): ``x+x+...+x`` with
45,000 terms nests 45,000 levels.  Raising `sys.setrecursionlimit` would change the whole
process, for every thread; instead, input that may nest that deep is read here, by
operator-precedence parsing with explicit stacks, into the same `ast` nodes, positions
included, that `ast.parse` gives for it (a test compares the two on random expressions).

It reads what the whitelist of `parse` can accept, and the operators and comparisons of
Python's expression grammar so that their errors read alike; other syntax (strings,
subscripts, lambda, ...) is refused here with the message `parse` gives for it.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

from ..budget import Deadline
from ..errors import ParseError

__all__ = ["read_deep", "MAX_BRACKETS"]

# Python's tokenizer accepts at most 200 nested brackets; the same limit here keeps the two alike.
MAX_BRACKETS = 200

_BINARY: dict[str, tuple[int, type]] = {
    "|": (2, ast.BitOr), "^": (3, ast.BitXor), "&": (4, ast.BitAnd), "<<": (5, ast.LShift), ">>": (5, ast.RShift),
    "+": (6, ast.Add), "-": (6, ast.Sub), "*": (7, ast.Mult), "/": (7, ast.Div), "//": (7, ast.FloorDiv),
    "%": (7, ast.Mod), "@": (7, ast.MatMult), "**": (9, ast.Pow),
}
_COMPARE: dict[str, type] = {"<": ast.Lt, "<=": ast.LtE, ">": ast.Gt, ">=": ast.GtE, "==": ast.Eq, "!=": ast.NotEq,
                             "in": ast.In, "is": ast.Is, "not in": ast.NotIn, "is not": ast.IsNot}
_UNARY: dict[str, type] = {"-": ast.USub, "+": ast.UAdd, "~": ast.Invert, "not": ast.Not}
_PREC_COMPARE, _PREC_NOT, _PREC_UNARY = 1, 0.5, 8
_REFUSED = {
    "lambda": ("lambda is not allowed", "write the expression itself"),
    "if": ("conditional expressions are not supported", "use where(condition, a, b)"),
    "else": ("conditional expressions are not supported", "use where(condition, a, b)"),
    "and": ("'and' / 'or' are not supported", "use where(...) with one comparison"),
    "or": ("'and' / 'or' are not supported", "use where(...) with one comparison"),
    "for": ("comprehensions are not allowed", "write the expression out, e.g. x1 + x2 + x3"),
    "await": ("'await' is not allowed", "give a numeric expression"),
    "yield": ("'yield' is not allowed", "give a numeric expression"),
    ".": ("attribute access is not allowed", "call functions by name, e.g. sin(x) rather than torch.sin(x)"),
    "[": ("subscripts are not allowed", "each variable is a scalar; give separate names such as x0, x1"),
    "{": ("sets are not allowed", "give one scalar expression"),
    ":=": ("assignment expressions are not allowed", "give one expression"),
    "=": ("keyword arguments are not supported", "pass arguments by position"),
    ":": ("invalid syntax", "check the expression near the caret"),
    "*": ("starred arguments are not allowed", "pass arguments one by one"),
}

Pos = tuple[int, int]  # (line, UTF-8 byte column), as ast gives them


@dataclass
class _Tok:
    kind: str  # "num", "name", "op", "str", "end"
    text: str
    start: Pos
    end: Pos


@dataclass
class _Operand:
    node: ast.expr
    start: Pos  # the extent with any parentheses around it: what an enclosing node spans
    end: Pos
    open_compare: bool = False  # a Compare not closed by parentheses: `a < b < c` extends it


def _set_pos(node: ast.AST, start: Pos, end: Pos) -> ast.AST:
    node.lineno, node.col_offset = start  # type: ignore[attr-defined]
    node.end_lineno, node.end_col_offset = end  # type: ignore[attr-defined]
    return node


def _tokens(source: str, error: Callable[..., ParseError]) -> list[_Tok]:
    lines = source.splitlines(keepends=True) or [""]
    ascii_rows = [line.isascii() for line in lines]
    byte_cols: dict[int, list[int]] = {}

    def pos(row: int, col: int) -> Pos:
        if not 0 < row <= len(lines) or ascii_rows[row - 1]:
            return (row, col)
        table = byte_cols.get(row)
        if table is None:  # byte offset of every character of the line, computed once
            table = [0]
            for ch in lines[row - 1]:
                table.append(table[-1] + len(ch.encode()))
            byte_cols[row] = table
        return (row, table[min(col, len(table) - 1)])

    out: list[_Tok] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                continue
            kind = {tokenize.NUMBER: "num", tokenize.NAME: "name", tokenize.OP: "op", tokenize.STRING: "str",
                    tokenize.ENDMARKER: "end"}.get(tok.type, "bad")
            out.append(_Tok(kind, tok.string, pos(*tok.start), pos(*tok.end)))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise error("invalid syntax", (1, 0), (1, 1), "check the expression near the caret") from exc
    return out


def _number(text: str) -> Any:
    plain = text.replace("_", "")
    if plain[-1] in "jJ":
        return complex(plain)
    if plain[:2].lower() in ("0x", "0o", "0b"):
        return int(plain, 0)
    if any(c in plain for c in ".eE"):
        return float(plain)
    if plain.strip("0") == "":
        return 0
    if plain.startswith("0"):
        raise ValueError("leading zeros in decimal integer literals are not permitted; use an 0o prefix for "
                         "octal integers")
    return int(plain)


def read_deep(source: str, error: Callable[..., ParseError], deadline: Deadline | None = None) -> ast.Expression:
    """Read `source` into the `ast.Expression` that `ast.parse(source, mode="eval")` would give.

    Args:
        source: the expression text.
        error: ``(message, start, end, hint) -> ParseError`` with byte positions, to point at a token.
        deadline: looked at every 4,096 tokens.

    Raises:
        ParseError: syntax outside what this reader knows, or a syntax error.
        TimeLimitError: the deadline passed.
    """
    toks = _tokens(source, error)
    operands: list[_Operand] = []
    # ("bin", text, prec, tok) | ("unary", text, tok) | ("cmp", text, tok) | ("paren", tok, commas)
    # | ("call", func operand, tok, base, args): base is len(operands) when the call opened
    ops: list[Any] = []
    expect_operand = True
    brackets = 0
    i = 0

    def fail(message: str, tok: _Tok, hint: str = "check the expression near the caret") -> ParseError:
        return error(message, tok.start, tok.end, hint)

    def refuse(tok: _Tok) -> ParseError:
        if tok.kind == "str":
            return fail("strings are not allowed", tok, "give a numeric expression")
        message, hint = _REFUSED.get(tok.text, ("invalid syntax", "check the expression near the caret"))
        return fail(message, tok, hint)

    def reduce_one() -> None:
        entry = ops.pop()
        if entry[0] == "unary":
            _, text, tok = entry
            arg = operands.pop()
            node = _set_pos(ast.UnaryOp(op=_UNARY[text](), operand=arg.node), tok.start, arg.end)
            operands.append(_Operand(node, tok.start, arg.end))  # type: ignore[arg-type]
        elif entry[0] == "bin":
            _, text, _, _ = entry
            right, left = operands.pop(), operands.pop()
            node = _set_pos(ast.BinOp(left=left.node, op=_BINARY[text][1](), right=right.node), left.start, right.end)
            operands.append(_Operand(node, left.start, right.end))  # type: ignore[arg-type]
        else:  # a comparison extends a chain not closed by parentheses: a < b < c is one Compare
            _, text, _ = entry
            right, left = operands.pop(), operands.pop()
            if left.open_compare:
                node = left.node
                node.ops.append(_COMPARE[text]())  # type: ignore[attr-defined]
                node.comparators.append(right.node)  # type: ignore[attr-defined]
            else:
                node = ast.Compare(left=left.node, ops=[_COMPARE[text]()], comparators=[right.node])
            _set_pos(node, left.start, right.end)
            operands.append(_Operand(node, left.start, right.end, open_compare=True))

    def prec_of(entry: Any) -> float:
        if entry[0] == "bin":
            return entry[2]
        if entry[0] == "unary":
            return _PREC_NOT if entry[1] == "not" else _PREC_UNARY
        if entry[0] == "cmp":
            return _PREC_COMPARE
        return -1.0  # brackets are closed by their bracket, never by an operator

    def reduce_for(prec: float, right_assoc: bool) -> None:
        while ops and (prec_of(ops[-1]) > prec or (prec_of(ops[-1]) == prec and not right_assoc)):
            reduce_one()

    def open_bracket(tok: _Tok) -> None:
        nonlocal brackets
        brackets += 1
        if brackets > MAX_BRACKETS:
            raise fail("Python's parser accepts at most 200 nested parentheses", tok,
                       "build deeper compositions with the Graph API (gradcheck_sym.Graph)")

    while i < len(toks):
        tok = toks[i]
        i += 1
        if deadline is not None and i & 4095 == 0:
            deadline.check("parsing")
        text = tok.text
        if expect_operand:
            if tok.kind == "num":
                try:
                    value = _number(text)
                except ValueError as exc:
                    raise fail(str(exc) if "leading zeros" in str(exc) else "invalid number", tok) from None
                node = _set_pos(ast.Constant(value=value), tok.start, tok.end)
                operands.append(_Operand(node, tok.start, tok.end))  # type: ignore[arg-type]
                expect_operand = False
            elif tok.kind == "name" and text in ("True", "False", "None"):
                node = _set_pos(ast.Constant(value={"True": True, "False": False, "None": None}[text]), tok.start,
                                tok.end)
                operands.append(_Operand(node, tok.start, tok.end))  # type: ignore[arg-type]
                expect_operand = False
            elif tok.kind == "name" and text == "not":
                ops.append(("unary", "not", tok))
            elif tok.kind == "name" and not keyword.iskeyword(text):
                name = unicodedata.normalize("NFKC", text)  # as Python's parser reads identifiers
                node = _set_pos(ast.Name(id=name, ctx=ast.Load()), tok.start, tok.end)
                operands.append(_Operand(node, tok.start, tok.end))  # type: ignore[arg-type]
                expect_operand = False
            elif tok.kind == "op" and text in ("-", "+", "~"):
                ops.append(("unary", text, tok))
            elif tok.kind == "op" and text == "(":
                open_bracket(tok)
                ops.append(("paren", tok, 0))
            elif tok.kind == "op" and text == ")" and ops and ops[-1][0] == "paren":
                raise fail("tuples are not allowed", ops[-1][1], "give one scalar expression")  # () or (x,)
            elif tok.kind == "op" and text == "[":
                raise fail("lists are not allowed", tok, "give one scalar expression")
            else:
                raise refuse(tok)
            continue
        if tok.kind == "end":
            break
        if tok.kind == "op" and text in _BINARY:
            prec = _BINARY[text][0]
            reduce_for(prec, right_assoc=text == "**")
            ops.append(("bin", text, prec, tok))
            expect_operand = True
        elif (tok.kind == "op" and text in _COMPARE) or (tok.kind == "name" and text in ("in", "is", "not")):
            if text == "not":
                if i >= len(toks) or toks[i].text != "in":
                    raise fail("invalid syntax", tok)
                text, i = "not in", i + 1
            elif text == "is" and i < len(toks) and toks[i].text == "not":
                text, i = "is not", i + 1
            reduce_for(_PREC_COMPARE, right_assoc=False)
            ops.append(("cmp", text, tok))
            expect_operand = True
        elif tok.kind == "op" and text == "(":  # a call of the operand before: binds tighter than any operator
            open_bracket(tok)
            func = operands.pop()
            ops.append(("call", func, tok, len(operands), []))
            expect_operand = not (i < len(toks) and toks[i].text == ")")  # f() has no arguments
        elif tok.kind == "op" and text == ",":
            while ops and ops[-1][0] not in ("call", "paren"):
                reduce_one()
            if not ops:
                raise fail("tuples are not allowed", tok, "give one scalar expression")
            if ops[-1][0] == "call":
                ops[-1][4].append(operands.pop())
                expect_operand = not (i < len(toks) and toks[i].text == ")")  # f(x,) ends with a comma
            else:
                raise fail("tuples are not allowed", ops[-1][1], "give one scalar expression")
        elif tok.kind == "op" and text == ")":
            while ops and ops[-1][0] not in ("call", "paren"):
                reduce_one()
            if not ops:
                raise fail("unmatched ')'", tok)
            entry = ops.pop()
            brackets -= 1
            if entry[0] == "call":
                _, func, _, base, args = entry
                if len(operands) > base:
                    args.append(operands.pop())
                node = _set_pos(ast.Call(func=func.node, args=[a.node for a in args], keywords=[]), func.start,
                                tok.end)
                operands.append(_Operand(node, func.start, tok.end))  # type: ignore[arg-type]
            else:
                inner = operands.pop()
                operands.append(_Operand(inner.node, entry[1].start, tok.end))
        elif tok.kind == "op" and text == "[":
            raise fail("subscripts are not allowed", tok, _REFUSED["["][1])
        elif (tok.kind == "name" and keyword.iskeyword(text)) or (tok.kind == "op" and text in _REFUSED):
            raise refuse(tok)
        else:
            raise fail("invalid syntax", tok, "is an operator missing between two terms (write 2*x, not 2 x)?")
    if expect_operand:
        raise fail("invalid syntax", toks[-1] if toks else _Tok("end", "", (1, 0), (1, 0)))
    while ops:
        if ops[-1][0] in ("call", "paren"):
            raise fail("'(' was never closed", ops[-1][2] if ops[-1][0] == "call" else ops[-1][1])
        reduce_one()
    return ast.Expression(body=operands[0].node)
