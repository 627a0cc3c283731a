"""The typed errors of gradcheck_sym: one base class, a few precise kinds.

Every error says what went wrong, where (a caret under the column, or the
name of the offending value) and what to do.  The command line turns any of
them into exit code 2 and prints no traceback; anything else that escapes is
an `InternalError` (exit code 3, "internal error, please report").
"""

from __future__ import annotations

__all__ = [
    "GradcheckSymError",
    "ParseError",
    "UnknownFunctionError",
    "LimitError",
    "InputError",
    "UnsupportedError",
    "TimeLimitError",
    "InternalError",
]


class GradcheckSymError(Exception):
    """Base class of every error this package raises on purpose.

    Args:
        message: one line saying what is wrong.
        hint: what to do about it (may be empty).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n{self.hint}" if self.hint else "")


def unusual_letters(name: str) -> str:
    """Words naming the non-ASCII letters of `name` ("" for ASCII), for errors about names:
    Cyrillic 'х' and Latin 'x' look the same and are different names."""
    import unicodedata

    odd = sorted({unicodedata.name(c, f"U+{ord(c):04X}") for c in name if ord(c) > 127})
    return f" ({name!r} is written with {', '.join(odd)})" if odd else ""


def _caret_block(source: str, line: int, col: int, end_col: int | None) -> str:
    """The offending line of `source` with carets under columns [col, end_col)."""
    lines = source.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    text = lines[line - 1]
    col = min(max(col, 0), len(text))
    width = max(1, (end_col if end_col is not None else col + 1) - col)
    width = min(width, max(1, len(text) - col))
    # NB: very long expressions are cut around the caret so the block stays readable.
    if len(text) > 100:
        start = max(0, col - 40)
        shown = ("..." if start else "") + text[start : start + 80] + ("..." if start + 80 < len(text) else "")
        col = col - start + (3 if start else 0)
        text = shown
        width = min(width, max(1, len(text) - col))
    return f"  {text}\n  {' ' * col}{'^' * width}"


class ParseError(GradcheckSymError, ValueError):
    """The expression text cannot be read.

    Carries the position as data (`line`, `col`, 1-based line, 0-based column
    in characters) and renders the line with a caret under the column.
    """

    def __init__(
        self,
        message: str,
        source: str,
        line: int = 1,
        col: int = 0,
        end_col: int | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message, hint)
        self.source = source
        self.line = line
        self.col = col
        self.end_col = end_col

    def __str__(self) -> str:
        where = f" (line {self.line}, column {self.col + 1})" if "\n" in self.source.strip() else ""
        text = f"{self.message}{where}\n{_caret_block(self.source, self.line, self.col, self.end_col)}"
        return text + (f"\n{self.hint}" if self.hint else "")


class UnknownFunctionError(ParseError):
    """A call to a function that is not in the op table."""

    def __init__(self, name: str, suggestions: list[str], source: str, line: int, col: int, end_col: int) -> None:
        if suggestions:
            hint = "did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        else:
            hint = "see `gradcheck-sym ops` for the functions the checker knows"
        super().__init__(f"unknown function {name!r}", source, line, col, end_col, hint)
        self.name = name
        self.suggestions = suggestions


class LimitError(GradcheckSymError, ValueError):
    """The input is larger than a configured limit (see `Limits`).

    Attributes:
        limit: the name of the limit (a field of `Limits`, e.g. "max_nodes").
        value: how large the input was.
        maximum: the limit in force.
    """

    def __init__(self, message: str, limit: str, value: int, maximum: int, hint: str = "") -> None:
        hint = hint or (
            f"raise it with Limits({limit}=...) in Python or --{limit.replace('_', '-')} on the command line"
        )
        super().__init__(message, hint)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class InputError(GradcheckSymError, ValueError):
    """Bad values for the check: unknown variables, missing values, bad ranges, bad options."""


class UnsupportedError(GradcheckSymError):
    """Valid input that the checker or torch cannot evaluate (e.g. an op without a float16 kernel)."""


class TimeLimitError(GradcheckSymError):
    """The check did not finish within its time limit (``timeout=``, ``--timeout``).

    Attributes:
        seconds: the limit in force.
        stage: what was running when the time ran out ("deriving", "compiling the reference", ...).
    """

    def __init__(self, message: str, seconds: float, stage: str = "",
                 hint: str = "raise the limit with timeout=... (--timeout on the command line), or check fewer "
                             "points or a smaller expression") -> None:
        super().__init__(message, hint)
        self.seconds = seconds
        self.stage = stage


class InternalError(GradcheckSymError):
    """A bug in gradcheck-sym: an exception no input should cause.

    The command line reports it with exit code 3 and asks for a report; `cause` is the
    original exception (its traceback is shown with ``--debug`` or ``GRADCHECK_SYM_DEBUG=1``).
    """

    def __init__(self, cause: BaseException) -> None:
        text = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(
            f"internal error, please report: {type(cause).__name__}" + (f": {text[:300]}" if text else ""),
            "this is a bug in gradcheck-sym, not in your input: please report it with the command that caused it; "
            "re-run with --debug (or GRADCHECK_SYM_DEBUG=1) for the traceback")
        self.cause = cause
