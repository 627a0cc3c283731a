"""The text of an expression, up to Python's syntax tree.

`Text` keeps the source and converts ast's UTF-8 byte columns to character columns (for
carets).  `prescan` says our way what Python's parser would refuse or warn about on stderr
(long integer literals, ``1if``, escapes in strings).  `syntax_tree` gets the tree from
`ast.parse` when it can build it at the recursion limit in force, else from `deep.read_deep`
— never by changing the recursion limit, which is process-wide.
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize

from ..budget import Deadline, run_bounded
from ..errors import LimitError, ParseError
from .deep import read_deep

__all__ = ["Text", "prescan", "syntax_tree"]


class Text:
    """The source text with conversions from ast's UTF-8 byte columns to character columns."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.parse_source = source  # what Python's parser reads (long integers as placeholders)
        self.big_ints: dict[str, int] = {}  # placeholder name -> the integer it stands for
        self.lines = source.splitlines() or [""]
        self._ascii = self.is_ascii = source.isascii()
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

    def byte_error(self, message: str, start: tuple[int, int], end: tuple[int, int], hint: str = "") -> ParseError:
        """A ParseError between two (line, UTF-8 byte column) positions, as ast and `deep` give them."""
        col, end_col = self.col(start[0], start[1]), self.col(end[0], end[1])
        return ParseError(message, self.source, start[0], col, end_col if end[0] == start[0] else None, hint)

    def char_error(self, message: str, start: tuple[int, int], end: tuple[int, int], hint: str = "") -> ParseError:
        """A ParseError between two (line, character column) positions, as `tokenize` gives them."""
        return ParseError(message, self.source, start[0], start[1], end[1] if end[0] == start[0] else None, hint)

    def written(self, node: ast.AST) -> str:
        """The text of `node` as written (one line)."""
        line, col, end_line, end_col = self.span(node)
        return self.lines[line - 1][col:end_col] if line == end_line and 0 < line <= len(self.lines) else ""


def syntax_tree(text: Text, max_chars: int, deadline: Deadline) -> ast.Expression:
    """Python's syntax tree of the text: by `ast.parse` when it can build it, else by `deep.read_deep`.

    `ast.parse` builds its tree recursively, up to about three times the recursion limit in
    force; the limit is never raised here (that would change it for the whole process and
    every thread).  Text that may nest deeper (`_depth_bound`) is read by `deep.read_deep`,
    which gives the same tree without recursion.  `ast.parse` runs in a worker thread with a
    large C stack, because its C parser recurses too.
    """
    source = text.parse_source
    if _depth_bound(source) <= 3 * sys.getrecursionlimit() - _DEPTH_MARGIN:
        try:
            return run_bounded(lambda: ast.parse(source, mode="eval"), None, name="gradcheck-sym-parse")
        except RecursionError:
            pass  # the bound was too optimistic: read it without recursion
        except MemoryError:
            raise LimitError("the expression is too large for Python's parser", "max_chars", len(source),
                             max_chars) from None
        except SyntaxError as exc:
            raise _syntax_error(exc, text) from None
        except ValueError as exc:  # null bytes
            raise ParseError(f"cannot read the expression: {exc}", text.source, 1, 0) from None
    if "\0" in source:
        raise ParseError("cannot read the expression: it contains a null character", text.source, 1,
                         source.index("\0"))
    return read_deep(source, text.byte_error, deadline)


# ast.parse starts counting at (the caller's depth) x 3: a margin for the worker's own frames.
_DEPTH_MARGIN = 200
_TOKEN = re.compile(r"[()\[\]{}]|[A-Za-z0-9_.]+|[^\sA-Za-z0-9_.()\[\]{}]+")


def _depth_bound(source: str) -> int:
    """An upper bound on the depth of Python's syntax tree for `source`.

    Within one level of brackets the tree over its atoms is at most as deep as that level has
    tokens; a bracket adds its own levels (a call and its argument) to the deepest one inside.
    """
    counts, deepest = [0], [0]
    for m in _TOKEN.finditer(source):
        t = m.group()
        if t in "([{":
            counts.append(0)
            deepest.append(0)
        elif t in ")]}" and len(counts) > 1:
            inner = counts.pop() + deepest.pop() + 2
            deepest[-1] = max(deepest[-1], inner)
        else:
            counts[-1] += 1
    while len(counts) > 1:
        inner = counts.pop() + deepest.pop() + 2
        deepest[-1] = max(deepest[-1], inner)
    return counts[0] + deepest[0] + 2


_LONG_INT = re.compile(r"(?<![\w.])[0-9][0-9_]*(?![\w.])")
# A digit directly followed by a letter (a superset of a number token followed by a name: the tokenizer
# decides), once the names are taken out: a digit inside a name (log1p, x0) made every expression with log1p pay
# for a full tokenization.  Both patterns are linear in the text (a name starts where no word character or dot
# precedes it: the 5x of `a.5x` stays).
_NAME = re.compile(r"(?<![\w.])[^\W\d]\w*")
_NUMBER_THEN_NAME = re.compile(r"[0-9]\.?[^\W\d]")  # (1.if too: the number 1. then if)


def prescan(text: Text, max_int_digits: int) -> None:
    """What Python's parser would refuse or warn about on stderr, said our way first.

    * Integer literals longer than Python's int-str limit (4,300 digits): Python refuses
      them; within `max_int_digits` they are read here and stand in the text as a
      placeholder name of the same length (columns are unchanged).
    * A number followed directly by a name (``1if``, ``2x``) and escapes in strings make
      Python's parser print a SyntaxWarning on stderr; they are errors here.
    """
    source = text.source
    cap = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if cap and re.search(r"[0-9_]{%d}" % (cap + 1), source):
        pieces, last = [], 0
        for m in _LONG_INT.finditer(source):
            digits = m.group().replace("_", "")
            if len(digits) <= cap:
                continue
            if len(digits) > max_int_digits:
                raise LimitError(f"an integer literal has {len(digits):,} digits; the limit is "
                                 f"{max_int_digits:,}", "max_int_digits", len(digits), max_int_digits)
            name = f"__int{len(text.big_ints)}_"
            name += "_" * (len(m.group()) - len(name))
            text.big_ints[name] = _big_int(digits)
            pieces += [source[last : m.start()], name]
            last = m.end()
        text.parse_source = "".join(pieces) + source[last:]
    if _NUMBER_THEN_NAME.search(_NAME.sub(" ", source)) or ("\\" in source and ("'" in source or '"' in source)):
        _scan_tokens(text)


def _scan_tokens(text: Text) -> None:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text.parse_source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return  # Python's parser says what is wrong
    for tok, after in zip(tokens, tokens[1:]):
        if tok.type == tokenize.STRING and "\\" in tok.string:
            raise text.char_error("strings are not allowed", tok.start, tok.end, "give a numeric expression")
        if tok.type == tokenize.NUMBER and after.type == tokenize.NAME and after.start == tok.end:
            raise text.char_error("invalid decimal literal", tok.start, after.end,
                                  "is an operator or a space missing after the number (write 2*x)?")


def _big_int(digits: str) -> int:
    """int(digits) for any length: Python's int-str limit applies to one conversion, so 4,000 digits at a time."""
    value = 0
    for i in range(0, len(digits), 4000):
        chunk = digits[i : i + 4000]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


def _syntax_error(exc: SyntaxError, text: Text) -> ParseError:
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
