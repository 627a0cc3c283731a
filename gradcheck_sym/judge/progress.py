"""A progress bar on stderr for a long check (rich), or nothing."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """A rich progress bar on stderr for long runs; does nothing when not shown."""

    def __init__(self, total: int, show: bool) -> None:
        self._bar = None
        if show:
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("checking points", total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
