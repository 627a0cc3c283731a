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
    line: int = 0  # a no_grad's: the statement inside the script's `with` block that ran the op (0: the site's line)


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
_TORCH_PREFIX = _TORCH_DIR + os.sep  # (torchvision's directory starts with torch's name: not torch's code)


class _GradBlocks(threading.local):
    """Per thread: the grad-mode blocks open (torch.no_grad, enable_grad, set_grad_enabled), innermost last, each
    with the place in torch a no_grad was opened by torch's own code with grad on (else None)."""

    def __init__(self) -> None:
        # (the block, torch's place that opened it or None, the script's frame that opened it or None)
        self.stack: list[tuple[Any, tuple[str, int, str] | None, Any]] = []


_BLOCKS = _GradBlocks()
_PATCH_LOCK = threading.Lock()
_PATCHED: dict[str, Any] = {"count": 0, "saved": []}


def _wrapped(cls: Any, torch_opens: bool) -> list[tuple[Any, str, Any, Any]]:
    """`cls`'s __enter__ and __exit__ wrapped to keep `_BLOCKS` (the originals, and what replaces them)."""
    enter, leave = cls.__dict__.get("__enter__"), cls.__dict__.get("__exit__")
    if enter is None or leave is None:
        return []

    @functools.wraps(enter)
    def entering(ctx: Any) -> Any:
        place = _torch_opened(sys._getframe(1)) if torch_opens and torch.is_grad_enabled() else None  # (mode before)
        out = enter(ctx)
        # (after: a block that failed to open has no exit to take it off)
        # (a block the script's `with` opens: its frame, whose line then says which statement inside runs; a function
        # decorated is opened by torch's decorator, and the op's own line says it)
        caller = sys._getframe(1)
        own = caller if place is None and not internal_file(caller.f_code.co_filename) else None
        _BLOCKS.stack.append((ctx, place, own))
        return out

    @functools.wraps(leave)
    def leaving(ctx: Any, *exc: Any) -> Any:
        stack = _BLOCKS.stack
        for k in range(len(stack) - 1, -1, -1):
            if stack[k][0] is ctx:
                del stack[k]
                break
        return leave(ctx, *exc)

    return [(cls, "__enter__", enter, entering), (cls, "__exit__", leave, leaving)]


class TorchNoGrad:
    """While entered: the `torch.no_grad` blocks open in this thread, and for each one torch's own code opened while
    grad was on — spectral_norm's power iteration, in a module's pre-hook or a parametrization — the place it was
    opened: what is computed there is a constant of the gradient by torch's design, not the script's cut.  A block
    the script opens inside it (enable_grad, set_grad_enabled: an optimizer's closure) is the script's again.

    torch.no_grad's, enable_grad's and set_grad_enabled's __enter__ and __exit__ are wrapped while any tracer is in
    one (then restored): they do what they did, and no frame of ours shows in a traceback (a module hook would: the
    slow path of every module call)."""

    def __init__(self) -> None:
        self._entered = False

    def __enter__(self) -> TorchNoGrad:
        with _PATCH_LOCK:
            if not self._entered:
                self._entered = True
                if _PATCHED["count"] == 0:
                    grad_mode = torch.autograd.grad_mode
                    saved = _wrapped(grad_mode.no_grad, True) + _wrapped(grad_mode.enable_grad, False) + \
                        _wrapped(grad_mode.set_grad_enabled, False)
                    for cls, name, _, replacement in saved:
                        setattr(cls, name, replacement)
                    _PATCHED["saved"] = saved
                _PATCHED["count"] += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with _PATCH_LOCK:
            if not self._entered:
                return
            self._entered = False
            _PATCHED["count"] -= 1
            if _PATCHED["count"] == 0:
                for cls, name, original, replacement in _PATCHED["saved"]:
                    if cls.__dict__.get(name) is replacement:  # (a script's own patch since is left to it)
                        setattr(cls, name, original)
                _PATCHED["saved"] = []

    def opened(self) -> tuple[str, int, str] | None:
        """Where torch's own code opened the innermost grad-mode block, a no_grad it opened with grad on; else None
        (the script's no_grad, a block the script opened inside torch's, or none of these)."""
        stack = _BLOCKS.stack
        return stack[-1][1] if stack and self._entered else None

    def statement(self) -> int:
        """The line the script's frame that opened the innermost grad-mode block with a `with` runs now (the statement
        inside its `with torch.no_grad():`), or 0: where a report says a no_grad is, where the op itself may be a
        module's, lines away from any no_grad."""
        stack = _BLOCKS.stack
        frame = stack[-1][2] if stack and self._entered else None
        return frame.f_lineno if frame is not None else 0


def _torch_opened(frame: Any) -> tuple[str, int, str] | None:
    """The place in torch of the frame that opens a no_grad block, if it is torch's own code.  One the decorator opens
    (torch.utils._contextlib) is torch's where torch's own code calls a function of torch's it decorated
    (spectral_norm's `_power_method`); the script may decorate anything, torch's functions included, and what it
    calls is its own."""
    if frame is None:
        return None
    path = os.path.abspath(frame.f_code.co_filename)
    if path == _CONTEXTLIB_PY:
        body = getattr(frame.f_locals.get("func"), "__code__", None)
        caller = frame.f_back
        while caller is not None and os.path.abspath(caller.f_code.co_filename) == _CONTEXTLIB_PY:
            caller = caller.f_back
        if body is None or caller is None or not os.path.abspath(body.co_filename).startswith(_TORCH_PREFIX) or \
                not os.path.abspath(caller.f_code.co_filename).startswith(_TORCH_PREFIX):
            return None
        return _torch_path(body.co_filename), body.co_firstlineno, body.co_name
    if not path.startswith(_TORCH_PREFIX):
        return None
    return torch_where(frame)


def _torch_path(filename: str) -> str:
    path = os.path.abspath(filename)
    return "torch" + path[len(_TORCH_DIR):] if path.startswith(_TORCH_PREFIX) else path


def torch_where(frame: Any) -> tuple[str, int, str]:
    """`frame`'s place in torch, as a reader finds it: ("torch/nn/utils/spectral_norm.py", 105, "compute_weight")."""
    return _torch_path(frame.f_code.co_filename), frame.f_lineno, frame.f_code.co_name
