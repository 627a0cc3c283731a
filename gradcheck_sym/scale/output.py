"""JSON Lines output in input order, and ``--resume``.

Results arrive in whatever order the workers finish them; the writer holds the
early finishers back and writes each line once every row before it is written.
So the file is always a prefix of the complete output, whatever the executor:
an interrupted run leaves complete lines (and at most one cut line), and
``--resume`` — which drops a cut last line, skips the rows whose key is in the
file and appends the rest in input order — gives the same bytes as a run that
was never interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Callable

from ..errors import InputError

__all__ = ["OrderedWriter", "read_done"]


def read_done(path: str | Path, key: Callable[[dict], str | None], *, what: str) -> tuple[list[str], set[str]]:
    """The complete lines of an earlier output and their keys; cuts off a last line without its newline.

    Args:
        path: the output file (need not exist).
        key: a line's key (None when the line is not one of ours: an error).
        what: the command's name for messages ("gradcheck-sym batch").

    Raises:
        InputError: a line that is not a result line of `what`.
    """
    path = Path(path)
    if not path.exists():
        return [], set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:  # the cut line of an interrupted run
            f.truncate(len(complete))
    lines = complete.decode("utf-8").splitlines(keepends=True)
    keys: set[str] = set()
    for n, line in enumerate(lines, 1):
        try:
            k = key(json.loads(line))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
            k = None
        if k is None:
            raise InputError(f"{path}:{n} is not a result line of {what}, so --resume cannot continue this file",
                             "give --output a new file, or remove that line")
        keys.add(k)
    return lines, keys


class OrderedWriter:
    """Writes line i once lines 0..i-1 are written (or were there already).

    Args:
        stream: where to write (flushed after every line, so an interrupt loses no finished row).
        done: the indices already in the output (skipped rows of a resumed run).
    """

    def __init__(self, stream: IO[str], done: set[int] | None = None) -> None:
        self.stream = stream
        self.done = set(done or ())
        self.next = 0
        self.held: dict[int, str] = {}
        self.written = 0
        self._advance()

    def _advance(self) -> None:
        while self.next in self.done:
            self.next += 1

    def add(self, index: int, line: str) -> None:
        self.held[index] = line
        while self.next in self.held:
            self.stream.write(self.held.pop(self.next))
            self.written += 1
            self.next += 1
            self._advance()
        self.stream.flush()

    def fsync(self) -> None:
        try:
            os.fsync(self.stream.fileno())
        except (OSError, ValueError, AttributeError):  # a terminal or a pipe
            pass
