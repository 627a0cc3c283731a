"""Stage 1: expression text -> `Graph`, with Python's `ast` and a whitelist.

The text is never evaluated: `ast.parse` gives a syntax tree, and only
numbers, names, ``+ - * / ** %``, unary ``-``/``+``, calls of functions in the
op table and one comparison as the condition of ``where`` are accepted.
Everything else is rejected with a `ParseError` that points at the column.

Python's own parser recurses once per nesting level (``x+x+...+x`` nests one
level per ``+``), so it runs in a thread with a large stack; deeper input
than `Limits.max_depth` is refused before any later stage can recurse on it.
"""

from __future__ import annotations

import ast
import math
import sys
import threading
from dataclasses import dataclass
from typing import Any, Collection, Sequence

from ..budget import NO_DEADLINE, Deadline
from ..errors import InputError, LimitError, ParseError, UnknownFunctionError
from ..ir.graph import Graph, Node
from ..ops import BINOPS, COMPARISONS, CONSTANTS, FUNCTIONS, suggest

__all__ = ["Limits", "parse"]


@dataclass(frozen=True)
class Limits:
    """Size limits that turn huge input into a clear `LimitError` instead of a hang.

    The defaults admit generated graphs of tens of thousands of nodes.

    Attributes:
        max_chars: longest expression text.
        max_depth: deepest nesting of the syntax tree (``a+b+c`` nests once per ``+``).
        max_nodes: most graph nodes after sharing identical subexpressions.
        max_int_digits: largest integer a constant power may produce (``10**10**10`` has
            ten billion digits); also bounds constant exponents.
        max_points: most evaluation points in one check.
    """

    max_chars: int = 1_000_000
    max_depth: int = 100_000
    max_nodes: int = 200_000
    max_int_digits: int = 10_000
    max_points: int = 1_000_000_000

    def __post_init__(self) -> None:
        for name in ("max_chars", "max_depth", "max_nodes", "max_int_digits", "max_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"Limits({name}={value!r}): a limit must be a positive integer",
                                 f"--{name.replace('_', '-')} on the command line takes the same")


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
_STACK_BYTES = 512 * 1024 * 1024


def _run_with_big_stack(fn: Any) -> Any:
    """Run `fn()` in a thread with a large C stack and recursion limit; re-raise its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 1_000_000))
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc
        finally:
            sys.setrecursionlimit(old)

    old_size = threading.stack_size()
    threading.stack_size(_STACK_BYTES)
    try:
        thread = threading.Thread(target=target, name="gradcheck-sym-parse")
        thread.start()
    finally:
        threading.stack_size(old_size)
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _Text:
    """The source text with conversions from ast's UTF-8 byte columns to character columns."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.splitlines() or [""]
        self._ascii = source.isascii()
        self._encoded = [ln.encode() for ln in self.lines] if not self._ascii else []

    def col(self, line: int, byte_col: int) -> int:
        if self._ascii or line < 1 or line > len(self.lines):
            return byte_col
        return len(self._encoded[line - 1][:byte_col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int, int, int]:
        line = getattr(node, "lineno", 1)
        end_line = getattr(node, "end_lineno", line) or line
        col = self.col(line, getattr(node, "col_offset", 0))
        end_col = self.col(end_line, getattr(node, "end_col_offset", None) or 0)
        return (line, col, end_line, end_col)

    def error(self, message: str, node: ast.AST, hint: str = "", cls: type[ParseError] = ParseError) -> ParseError:
        line, col, end_line, end_col = self.span(node)
        return cls(message, self.source, line, col, end_col if end_line == line else None, hint)


def _syntax_tree(source: str, limits: Limits) -> ast.Expression:
    text = _Text(source)

    def do_parse() -> ast.Expression:
        return ast.parse(source, mode="eval")

    try:
        return _run_with_big_stack(do_parse)
    except (RecursionError, MemoryError):
        raise LimitError(
            "the expression nests too deeply for Python's parser",
            "max_depth",
            0,
            limits.max_depth,
            hint="split it into smaller pieces, or build the graph with gradcheck_sym.Graph",
        ) from None
    except SyntaxError as exc:
        raise _syntax_error(exc, text) from None
    except ValueError as exc:  # e.g. null bytes, or an integer literal too long to convert
        raise ParseError(f"cannot read the expression: {exc}", source, 1, 0) from None


def _syntax_error(exc: SyntaxError, text: _Text) -> ParseError:
    source = text.source
    msg = exc.msg or "invalid syntax"
    line = exc.lineno or 1
    col = max((exc.offset or 1) - 1, 0)
    end = (exc.end_offset - 1) if exc.end_offset and exc.end_lineno == exc.lineno and exc.end_offset > exc.offset else None
    if "too many nested parentheses" in msg:
        return ParseError(
            "Python's parser accepts at most 200 nested parentheses",
            source, line, col, None,
            "build deeper compositions with the Graph API (gradcheck_sym.Graph)",
        )
    # A statement (import, assignment, ...) is valid Python but not an expression: say so.
    try:
        module = ast.parse(source, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        module = None
    if module is not None and module.body:
        stmt = next((s for s in module.body if not isinstance(s, ast.Expr)), None)
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            return text.error("imports are not allowed", stmt, "give one expression, e.g. sin(x) * y")
        if stmt is not None:
            kind = type(stmt).__name__.lower()
            return text.error(f"statements ({kind}) are not allowed", stmt, "give one expression, e.g. sin(x) * y")
        if len(module.body) > 1:
            return text.error("give one expression, not several lines", module.body[1], "join them with an operator")
    hint = "check the expression near the caret"
    if msg.startswith("invalid syntax. Perhaps you forgot a comma"):
        msg, hint = "invalid syntax", "is an operator missing between two terms (write 2*x, not 2 x)?"
    return ParseError(msg, source, line, col, end, hint)


def parse(
    source: str,
    *,
    variables: Sequence[str] | None = None,
    as_variables: Collection[str] = (),
    limits: Limits | None = None,
    deadline: Deadline | None = None,
) -> Graph:
    """Parse expression text into a `Graph`.

    Args:
        source: the expression, in Python syntax (``"sin(x)*exp(y)"``).
        variables: if given, exactly these names are the variables, in this order
            (unused ones get gradient 0; a name not listed is an error).
        as_variables: names to read as variables even where they name a constant
            (``e``, ``pi``) — the names the caller gives values for.
        limits: size limits (`Limits()` by default).
        deadline: a time budget (`budget.Deadline`), looked at while building the graph.

    Returns:
        The graph, one node per operator and call, identical subexpressions shared.

    Raises:
        ParseError: bad syntax, or syntax outside the whitelist (with a caret).
        UnknownFunctionError: a call to a function not in the op table.
        LimitError: text, nesting, node count or a constant power over `limits`.

    Example:
        >>> print(parse("x/y"))
        %0 = var x
        %1 = var y
        %2 = div %0 %1   # x/y
        output %2
    """
    limits = limits or Limits()
    if not isinstance(source, str):
        raise InputError(f"the expression must be a string, not {type(source).__name__}")
    if len(source) > limits.max_chars:
        raise LimitError(
            f"the expression is {len(source):,} characters long; the limit is {limits.max_chars:,}",
            "max_chars", len(source), limits.max_chars,
        )
    if not source.strip():
        raise ParseError("the expression is empty", source, 1, 0, None, "give an expression such as sin(x) * y")
    # Leading spaces would be an IndentationError for Python; they mean nothing here.
    stripped = source.strip()
    tree = _syntax_tree(stripped, limits)
    return _Builder(_Text(stripped), variables, set(as_variables), limits, deadline or NO_DEADLINE).build(tree)


class _Builder:
    """Walks the syntax tree without recursion and emits shared graph nodes."""

    def __init__(self, text: _Text, variables: Sequence[str] | None, as_variables: set[str], limits: Limits,
                 deadline: Deadline) -> None:
        self.text = text
        self.limits = limits
        self.deadline = deadline
        self.declared = list(variables) if variables is not None else None
        if self.declared is not None:
            bad = [v for v in self.declared if not isinstance(v, str) or not v.isidentifier()]
            if bad:
                raise InputError(f"variable names must be identifiers, not {bad[0]!r}")
            as_variables = as_variables | set(self.declared)
        self.as_variables = as_variables
        self.nodes: list[Node] = []
        self.keys: dict[tuple[Any, ...], int] = {}
        self.int_values: dict[int, int] = {}  # exact integer constants, to bound powers
        self.has_var: list[bool] = []  # per node: depends on a variable
        self.var_order: list[str] = []
        if self.declared is not None:
            for name in self.declared:
                self._var(name, None)

    # -- node creation -------------------------------------------------
    def _add(self, key: tuple[Any, ...], **fields: Any) -> int:
        found = self.keys.get(key)
        if found is not None:
            return found
        if len(self.nodes) >= self.limits.max_nodes:
            raise LimitError(
                f"the expression has more than {self.limits.max_nodes:,} nodes",
                "max_nodes", len(self.nodes) + 1, self.limits.max_nodes,
            )
        k = len(self.nodes)
        self.nodes.append(Node(id=k, **fields))
        self.has_var.append(fields["op"] == "var" or any(self.has_var[a] for a in fields.get("args", ())))
        self.keys[key] = k
        return k

    def _var(self, name: str, span: tuple[int, int, int, int] | None) -> int:
        if ("var", name) not in self.keys:
            self.var_order.append(name)
        return self._add(("var", name), op="var", name=name, span=span)

    # -- the walk ------------------------------------------------------
    def build(self, tree: ast.Expression) -> Graph:
        results: dict[int, int] = {}
        # Frames: (ast node, no_grad region or None, may be a comparison, depth, children done)
        stack: list[tuple[ast.AST, int | None, bool, int, bool]] = [(tree.body, None, False, 1, False)]
        pending_regions: dict[int, int] = {}
        while stack:
            if len(stack) & 1023 == 0:
                self.deadline.check("parsing")
            node, region, cond_ok, depth, done = stack.pop()
            if depth > self.limits.max_depth:
                raise LimitError(
                    f"the expression nests deeper than {self.limits.max_depth:,} levels",
                    "max_depth", depth, self.limits.max_depth,
                )
            if not done:
                children = self._children(node, cond_ok)
                inner_region = region
                if isinstance(node, ast.Call) and node.func.id == "no_grad":  # type: ignore[attr-defined]
                    # The region is named by the id the call will get; reserve a unique key now.
                    inner_region = -(id(node))
                    pending_regions[id(node)] = inner_region
                stack.append((node, region, cond_ok, depth, True))
                for child, child_cond in reversed(children):
                    stack.append((child, inner_region, child_cond, depth + 1, False))
                continue
            results[id(node)] = self._emit(node, region, results)
        graph_regions = self._resolve_regions(pending_regions, results)
        output = results[id(tree.body)]
        variables = tuple(self.declared if self.declared is not None else self.var_order)
        graph = Graph(tuple(graph_regions), output, variables, self.text.source)
        return graph

    def _resolve_regions(self, pending: dict[int, int], results: dict[int, int]) -> list[Node]:
        """Replace the placeholder region keys by the ids of the no_grad call nodes."""
        if not pending:
            return self.nodes
        mapping = {placeholder: results[ast_id] for ast_id, placeholder in pending.items()}
        out = []
        for n in self.nodes:
            if n.region is not None:
                n = Node(n.id, n.op, n.args, n.span, n.name, n.value, mapping[n.region])
            out.append(n)
        return out

    def _children(self, node: ast.AST, cond_ok: bool) -> list[tuple[ast.AST, bool]]:
        """Validate `node` against the whitelist and list its children."""
        err = self.text.error
        if isinstance(node, ast.BinOp):
            bad = _BAD_BINOPS.get(type(node.op))
            if bad:
                raise err(f"the operator {bad[0]} is not supported", node, bad[1])
            return [(node.left, False), (node.right, False)]
        if isinstance(node, ast.UnaryOp):
            if type(node.op) not in _UNARY_NAMES:
                word = "'not'" if isinstance(node.op, ast.Not) else "'~'"
                raise err(f"the operator {word} is not supported", node, "use where(...) with one comparison")
            return [(node.operand, False)]
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                raise err("True and False are not numbers here", node, "write 1 or 0")
            if isinstance(value, complex):
                raise err("complex numbers are not supported", node, "the checker works with real numbers")
            if isinstance(value, (str, bytes)):
                raise err("strings are not allowed", node, "give a numeric expression")
            if not isinstance(value, (int, float)):
                raise err(f"{value!r} is not a number", node, "give a numeric expression")
            if isinstance(value, int) and value.bit_length() > self.limits.max_int_digits * 3.33:
                raise LimitError(
                    f"an integer literal has more than {self.limits.max_int_digits:,} digits",
                    "max_int_digits", len(str(value)), self.limits.max_int_digits,
                )
            return []
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise err(f"the name {node.id!r} is not allowed (names starting with '__' are reserved)", node,
                          "rename the variable")
            if self.declared is not None and node.id not in self.declared and not (
                node.id in CONSTANTS and node.id not in self.as_variables
            ):
                raise err(f"unknown variable {node.id!r}", node,
                          "declared variables: " + ", ".join(self.declared) if self.declared else "")
            return []
        if isinstance(node, ast.Call):
            return self._call_children(node)
        if isinstance(node, ast.Compare):
            if not cond_ok:
                raise err("comparisons are only allowed as the condition of where(...)", node,
                          "write where(x > 0, a, b)")
            if len(node.ops) != 1:
                raise err("chained comparisons are not supported", node, "use one comparison, e.g. x > 0")
            if type(node.ops[0]) not in _CMP_NAMES:
                raise err("only < <= > >= == != comparisons are supported", node, "write e.g. x > 0")
            return [(node.left, False), (node.comparators[0], False)]
        rejected = _REJECTED.get(type(node))
        if rejected:
            raise err(rejected[0], node, rejected[1])
        raise err(f"{type(node).__name__} syntax is not allowed in an expression", node,
                  "use numbers, names, + - * / ** %, and function calls")

    def _call_children(self, node: ast.Call) -> list[tuple[ast.AST, bool]]:
        err = self.text.error
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise err("attribute access is not allowed", func,
                          "call functions by name, e.g. sin(x) rather than torch.sin(x)")
            raise err("only named functions can be called", func, "call a function by name, e.g. sin(x)")
        name = func.id
        if name.startswith("__"):
            raise err(f"the name {name!r} is not allowed (names starting with '__' are reserved)", func,
                      "call a function of the op table, e.g. sin(x)")
        if node.keywords:
            kw = node.keywords[0]
            raise err("keyword arguments are not supported", kw,
                      f"pass arguments by position, e.g. {_example_call(name)}")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise err("starred arguments are not allowed", a, "pass arguments one by one")
        op = FUNCTIONS.get(name)
        if op is None:
            line, col, _, end_col = self.text.span(func)
            raise UnknownFunctionError(name, suggest(name), self.text.source, line, col, end_col)
        n = len(node.args)
        lo, hi = op.arity
        variadic = name in ("min", "max")
        if n < lo or (n > hi and not variadic):
            want = str(lo) if lo == hi else f"{lo} or {hi}"
            if variadic:
                want = "at least 2"
            raise err(f"{name}() takes {want} argument{'s' if want != '1' else ''}, got {n}", node,
                      f"e.g. {_example_call(name)}")
        return [(a, name == "where" and i == 0) for i, a in enumerate(node.args)]

    def _emit(self, node: ast.AST, region: int | None, results: dict[int, int]) -> int:
        span = self.text.span(node)
        if isinstance(node, ast.BinOp):
            a, b = results[id(node.left)], results[id(node.right)]
            opname = _BINOP_NAMES[type(node.op)]
            if opname == "pow":
                self._check_power(a, b, node)
            k = self._add((opname, (a, b), region), op=opname, args=(a, b), span=span, region=region)
            self._track_int(k, opname, (a, b))
            return k
        if isinstance(node, ast.UnaryOp):
            a = results[id(node.operand)]
            opname = _UNARY_NAMES[type(node.op)]
            if opname == "pos":
                return a
            # Fold "-3" to a constant: the report reads better and sympy needs no node for it.
            arg = self.nodes[a]
            if arg.op == "const" and isinstance(arg.value, (int, float)) and arg.region == region:
                return self._const(-arg.value, span, region)
            k = self._add(("neg", (a,), region), op="neg", args=(a,), span=span, region=region)
            self._track_int(k, "neg", (a,))
            return k
        if isinstance(node, ast.Constant):
            return self._const(node.value, span, region)
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS and node.id not in self.as_variables:
                return self._add(("const", CONSTANTS[node.id], region), op="const", value=CONSTANTS[node.id],
                                 span=span, region=region)
            return self._var(node.id, span)
        if isinstance(node, ast.Compare):
            a, b = results[id(node.left)], results[id(node.comparators[0])]
            opname = _CMP_NAMES[type(node.ops[0])]
            return self._add((opname, (a, b), region), op=opname, args=(a, b), span=span, region=region)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        name = node.func.id
        args = [results[id(a)] for a in node.args]
        if name == "where" and self.nodes[args[0]].op not in COMPARISONS:
            raise self.text.error("the condition of where(...) must be a comparison", node.args[0],
                                  "write e.g. where(x > 0, a, b)")
        if name in ("min", "max") and len(args) > 2:
            # min(a, b, c) = min(min(a, b), c): each pair is one node with the call's text.
            k = args[0]
            for b in args[1:]:
                k = self._add((name, (k, b), region), op=name, args=(k, b), span=span, region=region)
            return k
        node_region = region
        return self._add((name, tuple(args), node_region), op=name, args=tuple(args), span=span, region=node_region)

    def _const(self, value: int | float, span: tuple[int, int, int, int], region: int | None) -> int:
        k = self._add(("const", type(value).__name__, value, region), op="const", value=value, span=span,
                      region=region)
        if isinstance(value, int):
            self.int_values[k] = value
        return k

    def _track_int(self, k: int, opname: str, args: tuple[int, ...]) -> None:
        vals = [self.int_values.get(a) for a in args]
        if any(v is None for v in vals):
            return
        if opname == "neg":
            self.int_values[k] = -vals[0]  # type: ignore[operator]
        elif opname in ("add", "sub", "mul"):
            a, b = vals  # type: ignore[misc]
            self.int_values[k] = a + b if opname == "add" else a - b if opname == "sub" else a * b
        elif opname == "pow" and vals[1] >= 0:  # type: ignore[operator]
            self.int_values[k] = vals[0] ** vals[1]  # type: ignore[operator]

    def _check_power(self, base: int, exponent: int, node: ast.AST) -> None:
        """Refuse constant powers that sympy would expand into enormous exact numbers."""
        if self.has_var[exponent] or self.has_var[base]:
            return
        e = self.int_values.get(exponent)
        if e is None:
            return
        b = self.int_values.get(base)
        digits = abs(e) * (math.log10(abs(b)) if b not in (None, 0) and abs(b) > 1 else 1.0)
        if b in (0, 1, -1):
            digits = 1
        if digits > self.limits.max_int_digits:
            line, col, end_line, end_col = self.text.span(node)
            shown = self.text.lines[line - 1][col:end_col] if line == end_line else "power"
            raise LimitError(
                f"the constant power {shown} would have about {digits:.3g} digits;"
                f" the limit is {self.limits.max_int_digits:,}",
                "max_int_digits", int(min(digits, 10**18)), self.limits.max_int_digits,
                hint="write the number as a float (e.g. 1e300) or raise Limits(max_int_digits=...)",
            )


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
