"""Stage 1: expression text -> `Graph`, with Python's `ast` and a whitelist.

The text is never evaluated: `ast.parse` gives a syntax tree, and only
numbers, names, ``+ - * / ** %``, unary ``-``/``+``, calls of functions in the
op table and one comparison as the condition of ``where`` are accepted.
Everything else is rejected with a `ParseError` that points at the column.

Python's own parser recurses once per nesting level (``x+x+...+x`` nests one
level per ``+``): it runs in a thread with a large stack, and text that may
nest deeper than it can build at the recursion limit in force is read by
`deep.read_deep` into the same tree, without recursion (the limit is never
changed).  Deeper input than `Limits.max_depth` is refused before any later
stage can recurse on it.

Names are compared as written: Python reads fullwidth ``ｘ`` and mathematical
``𝑥`` as ``x`` (NFKC); here they are an error that says so, never silently the
same variable.  Letters that only look alike (Cyrillic ``х``) are different
names, and an error about them names the letter.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Collection, Sequence

from ..budget import NO_DEADLINE, Deadline
from ..errors import InputError, LimitError, ParseError, UnknownFunctionError, unusual_letters
from ..ir.graph import Graph, Node
from ..ops import COMPARISONS, CONSTANTS, FUNCTIONS, suggest
from .sympy_names import RENAMED, rewrite_sympy_names
from .text import Text, prescan, syntax_tree
from .whitelist import _BAD_BINOPS, _BINOP_NAMES, _CMP_NAMES, _REJECTED, _UNARY_NAMES, _example_call

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
    limits = limits if limits is not None else Limits()
    if not isinstance(limits, Limits):
        raise InputError(f"limits must be a gradcheck_sym.Limits, not {type(limits).__name__}")
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
    text = Text(stripped)
    deadline = deadline or NO_DEADLINE
    prescan(text, limits.max_int_digits)
    tree = rewrite_sympy_names(syntax_tree(text, limits.max_chars, deadline), stripped, text.error)
    return _Builder(text, variables, set(as_variables), limits, deadline).build(tree)


class _Builder:
    """Walks the syntax tree without recursion and emits shared graph nodes."""

    def __init__(self, text: Text, variables: Sequence[str] | None, as_variables: set[str], limits: Limits,
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
                digits = len(self.text.written(node).replace("_", "")) or int(value.bit_length() * 0.30103) + 1
                raise LimitError(
                    f"an integer literal has {digits:,} digits; the limit is {self.limits.max_int_digits:,}",
                    "max_int_digits", digits, self.limits.max_int_digits,
                )
            return []
        if isinstance(node, ast.Name):
            if node.id in self.text.big_ints:  # a long integer literal (see _prescan)
                return []
            self._check_written(node.id, node)
            if node.id.startswith("__"):
                raise err(f"the name {node.id!r} is not allowed (names starting with '__' are reserved)", node,
                          "rename the variable")
            if self.declared is not None and node.id not in self.declared and not (
                node.id in CONSTANTS and node.id not in self.as_variables
            ):
                raise err(f"unknown variable {node.id!r}{unusual_letters(node.id)}", node,
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

    def _check_written(self, name: str, node: ast.AST) -> None:
        """Refuse a name Python merged with another by its compatibility form (NFKC)."""
        if self.text.is_ascii:
            return
        written = self.text.written(node)
        if written and written != name and RENAMED.get(written) != name:
            raise self.text.error(
                f"the name {written!r} is written with compatibility characters (fullwidth or mathematical "
                f"letters) that Python reads as {name!r}", node,
                f"write {name!r}: gradcheck-sym does not merge names that are written differently")

    def _call_children(self, node: ast.Call) -> list[tuple[ast.AST, bool]]:
        err = self.text.error
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise err("attribute access is not allowed", func,
                          "call functions by name, e.g. sin(x) rather than torch.sin(x)")
            raise err("only named functions can be called", func, "call a function by name, e.g. sin(x)")
        name = func.id
        self._check_written(name, func)
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
            if node.id in self.text.big_ints:
                return self._const(self.text.big_ints[node.id], span, region)
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
        if name == "pow":  # pow(a, b) is a ** b: the same guard and the same exact integers
            self._check_power(args[0], args[1], node)
            k = self._add(("pow", tuple(args), region), op="pow", args=tuple(args), span=span, region=region)
            self._track_int(k, "pow", tuple(args))
            return k
        return self._add((name, tuple(args), region), op=name, args=tuple(args), span=span, region=region)

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
        """Refuse constant powers that sympy would expand into enormous exact numbers (``**`` and pow())."""
        if self.has_var[exponent] or self.has_var[base]:
            return
        e = self.int_values.get(exponent)
        if e is None or e == 0:
            return
        b = self.int_values.get(base)
        if b in (0, 1, -1):
            return
        # digits = |e| * log10|b|, in logarithms: |e| may itself have thousands of digits (2**10**400)
        log_digits = math.log10(abs(e)) + (math.log10(math.log10(abs(b))) if b is not None and abs(b) > 1 else 0.0)
        if log_digits > math.log10(self.limits.max_int_digits):
            line, col, end_line, end_col = self.text.span(node)
            shown = self.text.lines[line - 1][col:end_col] if line == end_line else "power"
            digits = 10.0**log_digits if log_digits < 300 else math.inf
            about = f"{digits:.3g}" if digits < math.inf else f"1e+{log_digits:.0f}"
            raise LimitError(
                f"the constant power {shown} would have about {about} digits;"
                f" the limit is {self.limits.max_int_digits:,}",
                "max_int_digits", int(min(digits, 10**18)), self.limits.max_int_digits,
                hint="write the number as a float (e.g. 1e300) or raise Limits(max_int_digits=...)",
            )
