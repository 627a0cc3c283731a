"""Where a traced op happened in the user's source, and the records the trace keeps per site.

The tracer runs inside the user's call stack: these helpers find the frame Python would blame
for an op (ours and torch's frames skipped), call the user's torch function from a frame that
looks like that line (so torch's warnings name the user's file), and spot a custom
``autograd.Function`` whose forward is running.  `Cut` and `Note` are what the trace records
against a site: the gradient cuts and the things it could not follow.  None of it needs the
tracer's state, so the script runner and the traceback filter use it directly.
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Cut", "Note", "internal_file", "hidden_frame", "dispatching_frame", "CallAs", "OVERRIDES_PY",
           "TRAMPOLINE", "TorchNoGrad", "torch_where"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_FUNCTION_PY = os.path.abspath(torch.autograd.function.__file__)


@functools.lru_cache(maxsize=4096)
def internal_file(filename: str) -> bool:
    """Ours or torch's (cached: asked for every frame of every traced op)."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path.startswith(_TORCH_DIR)


OVERRIDES_PY = os.path.abspath(torch.overrides.__file__)
TRAMPOLINE = "<gradcheck-sym call>"
_TEMPLATE = (lambda f, a, k: f(*a, **k)).__code__  # one line: every instruction is on co_firstlineno


def dispatching_frame(frame: Any) -> Any:
    """The frame that called the torch function being handled: the one Python would blame.

    Our own frames are skipped; so are torch.overrides' and the function that delegated to it
    (``F.mse_loss`` calls ``handle_torch_function``): without a mode, the op ran from its caller.
    """
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename == OVERRIDES_PY:
        while frame is not None and frame.f_code.co_filename == OVERRIDES_PY:
            frame = frame.f_back
        frame = frame.f_back if frame is not None else None
    return frame


class CallAs:
    """Calls the user's torch function from a frame that looks like its caller's line.

    Warnings raised inside torch (C++ ones point at the innermost Python frame; Python ones at
    ``stacklevel`` frames up) then name the user's file and line, in the user's module's
    warning registry and filters, exactly as without us, instead of a line of the tracer.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], Any] = {}

    def __call__(self, frame: Any, func: Any, args: tuple, kwargs: dict) -> Any:
        if frame is None:
            return func(*args, **kwargs)
        key = (frame.f_code.co_filename, frame.f_lineno, id(frame.f_globals))
        call = self._cache.get(key)
        if call is None:
            import types

            code = _TEMPLATE.replace(co_filename=key[0], co_firstlineno=max(key[1], 1), co_name=TRAMPOLINE,
                                     co_qualname=TRAMPOLINE)
            call = self._cache[key] = types.FunctionType(code, frame.f_globals, TRAMPOLINE)
        return call(func, args, kwargs)


def hidden_frame(filename: str, name: str) -> bool:
    """Frames a traceback of the user's error leaves out: ours, torch.overrides', the trampoline's."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path == OVERRIDES_PY or name == TRAMPOLINE


@dataclass(frozen=True)
class Cut:
    """A place where the gradient is cut: kind (no_grad, detach, .data, .item(), .tolist()), the site,
    and the ``stop`` variables it made."""

    kind: str
    site: int
    region: int
    vars: tuple[int, ...]


@dataclass(frozen=True)
class Note:
    """Something the trace could not follow: kind ("opaque", "stale-graph", "leak", "internal", "subclass",
    "device"), site, text."""

    kind: str
    site: int
    text: str


def _user_frame() -> tuple[str, int, str]:
    """The user's file, line and source line that the current op came from (our own frames skipped)."""
    file, line = _user_line(3)
    return (file, line, linecache.getline(file, line).strip() if file else "")


def _user_line(depth: int = 2) -> tuple[str, int]:
    """`_user_frame`'s file and line, without reading the source line (`depth`: frames above this one to start)."""
    frame = sys._getframe(depth)
    while frame is not None and internal_file(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    return ("", 0) if frame is None else (frame.f_code.co_filename, frame.f_lineno)


def in_custom_forward() -> bool:
    """Whether a custom autograd.Function's forward is running (an apply() of torch's on the stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "apply" and code.co_filename in _FUNCTION_FILES:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


_FUNCTION_FILES = {torch.autograd.function.__file__, _FUNCTION_PY}


def _custom_forward() -> tuple[str | None, Any, Any]:
    """The custom autograd.Function whose forward is running, if any (seen on the stack), what tells its call
    apart (its ctx, or the frame of its apply()), and the call as apply() got it: (class, args, kwargs, the line
    that called apply())."""
    frame = sys._getframe(2)
    ctx = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "apply" and os.path.abspath(code.co_filename) == _FUNCTION_PY:
            local = frame.f_locals
            cls = local.get("cls")
            # the call's ctx (its backward node, alive as long as its outputs' graph) tells calls apart
            caller = frame.f_back
            return (getattr(cls, "__name__", "Function"), ctx if ctx is not None else frame,
                    (cls, local.get("args", ()), local.get("kwargs", {}), caller.f_lineno if caller else 0))
        if code.co_name == "forward" and "ctx" in frame.f_locals:
            ctx = frame.f_locals["ctx"]
        frame = frame.f_back  # type: ignore[assignment]
    return None, None, None



_CONTEXTLIB_PY = os.path.abspath(getattr(sys.modules.get("torch.utils._contextlib"), "__file__", None) or "-")


class TorchNoGrad:
    """While entered: the `torch.no_grad` blocks open in this thread, and for each one torch's own code opened while
    grad was on — spectral_norm's power iteration, in a module's pre-hook or a parametrization — the place it was
    opened: what is computed there is a constant of the gradient by torch's design, not the script's cut.

    torch.no_grad's __enter__ and __exit__ are wrapped while entered (then restored): they do what they did, and no
    frame of ours shows in a traceback (a module hook would: the slow path of every module call)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._saved: tuple[Any, Any, Any] | None = None

    def _stack(self) -> list[tuple[Any, tuple[str, int, str] | None]]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __enter__(self) -> TorchNoGrad:
        cls = torch.autograd.grad_mode.no_grad
        enter, leave = cls.__dict__.get("__enter__"), cls.__dict__.get("__exit__")
        if enter is None or leave is None or self._saved is not None:
            return self  # (another torch's no_grad: every no_grad is the script's, as before)
        stack_of = self._stack

        @functools.wraps(enter)
        def entering(ctx: Any) -> Any:
            stack_of().append((ctx, _torch_opened(sys._getframe(1)) if torch.is_grad_enabled() else None))
            return enter(ctx)

        @functools.wraps(leave)
        def leaving(ctx: Any, *exc: Any) -> Any:
            stack = stack_of()
            for k in range(len(stack) - 1, -1, -1):
                if stack[k][0] is ctx:
                    del stack[k]
                    break
            return leave(ctx, *exc)

        cls.__enter__, cls.__exit__ = entering, leaving
        self._saved = (cls, enter, leave)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            cls, enter, leave = self._saved
            cls.__enter__, cls.__exit__ = enter, leave
            self._saved = None

    def opened(self) -> tuple[str, int, str] | None:
        """Where torch's own code opened the innermost no_grad block, if it did so with grad on; else None (the
        script's no_grad, or none of torch.no_grad's)."""
        stack = self._stack()
        return stack[-1][1] if stack else None


def _torch_opened(frame: Any) -> tuple[str, int, str] | None:
    """The place in torch of the frame that opens a no_grad block, if it is torch's own code (a function torch
    decorated with @torch.no_grad counts as its body's: the script's own decorated function is the script's)."""
    if frame is None:
        return None
    code = frame.f_code
    if os.path.abspath(code.co_filename) == _CONTEXTLIB_PY and code.co_name == "decorate_context":
        body = getattr(frame.f_locals.get("func"), "__code__", None)
        if body is None or not os.path.abspath(body.co_filename).startswith(_TORCH_DIR):
            return None
        return _torch_path(body.co_filename), body.co_firstlineno, body.co_name
    if not os.path.abspath(code.co_filename).startswith(_TORCH_DIR):
        return None
    return torch_where(frame)


def _torch_path(filename: str) -> str:
    path = os.path.abspath(filename)
    return "torch" + path[len(_TORCH_DIR):] if path.startswith(_TORCH_DIR) else path


def torch_where(frame: Any) -> tuple[str, int, str]:
    """`frame`'s place in torch, as a reader finds it: ("torch/nn/utils/spectral_norm.py", 105, "compute_weight")."""
    return _torch_path(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_name
