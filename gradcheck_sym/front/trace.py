"""Stage 1b: a real PyTorch function -> `Graph`, by running it and recording every torch op.

A `TorchFunctionMode` sees every torch function, Tensor method, operator and
property access (``.data``) the function performs.  Each tensor is mirrored by
a numpy object array of the same shape whose elements are graph nodes (`_Sym`),
so broadcasting, reductions, matmul, indexing and reshaping follow numpy's
rules and every scalar operation becomes one node of the op table.  Inputs
(and an `nn.Module`'s parameters) get one variable per element, named
``x[0]``, ``w[1,2]``.

Cuts of the gradient become data: outputs of ops run with grad mode off
(``no_grad``, ``set_grad_enabled(False)``, ``inference_mode``, decorators) are
wrapped in ``no_grad`` nodes, ``.detach()``, ``.data``, ``.item()``/``.tolist()``
in ``detach`` nodes, each tagged with the user's file:line and grouped into
regions.  A ``.data`` assignment or an in-place change through ``.data`` of a
tensor that has a graph is a stale graph.  Inside a custom
`torch.autograd.Function`'s ``forward`` grad mode is off by design; nothing
there is a cut: the forward is the math, the user's ``backward`` is what is
checked.
"""

from __future__ import annotations

import functools
import linecache
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..errors import GradcheckSymError, LimitError, UnsupportedError
from ..ir.graph import Graph, Node

__all__ = ["Trace", "Cut", "trace_function", "FunctionError", "MAX_INPUT_ELEMENTS", "MAX_TRACE_NODES"]

# Scalar elements of all inputs together, and graph nodes of one trace: beyond these the
# symbolic side would take minutes, so the trace stops with a LimitError instead.
MAX_INPUT_ELEMENTS = 5_000
MAX_TRACE_NODES = 200_000

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_FUNCTION_PY = torch.autograd.function.__file__


class FunctionError(GradcheckSymError):
    """The user's function raised; carries its own traceback (our frames and torch's removed)."""

    def __init__(self, exc: BaseException) -> None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _internal(f.filename)]
        text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(exc), exc))
        super().__init__(f"the function raised {type(exc).__name__}: {exc}", "Traceback (most recent call last):\n"
                         + text.rstrip())
        self.original = exc


def _internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path.startswith(_TORCH_DIR)


@dataclass(frozen=True)
class Cut:
    """One place in the user's code where the gradient is cut.

    Attributes:
        kind: "no_grad", "detach", ".data", ".item()", ".tolist()", "stale-graph".
        file, line: where.
        source: the source line.
        nodes: the cut nodes in the graph.
    """

    kind: str
    file: str
    line: int
    source: str
    nodes: tuple[int, ...]

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"


@dataclass
class Trace:
    """What one run of the function left behind.

    Attributes:
        graph: the scalar graph; its output is the first output element.
        inputs: (name, shape, variable names) per differentiable input, in order.
        outputs: node ids of the output elements (flattened, all outputs in order).
        output_shapes: shape of each returned tensor.
        cuts: the cut regions.
        stale: `.data` assignments / in-place changes through `.data` that left a stale graph.
        custom_functions: names of the custom autograd.Functions that ran.
    """

    graph: Graph
    inputs: list[tuple[str, tuple[int, ...], list[str]]]
    outputs: list[int]
    output_shapes: list[tuple[int, ...]]
    cuts: list[Cut]
    stale: list[Cut]
    custom_functions: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the graph builder
class _Builder:
    """Hash-consed graph nodes; `origin` labels the nodes being made."""

    def __init__(self, share: bool = True) -> None:
        self.nodes: list[Node] = []
        self.keys: dict[tuple[Any, ...], int] = {}
        self.origin: str | None = None
        self.variables: list[str] = []
        # Sharing identical scalar ops is right for a function's inputs' gradients; a script's
        # tensors each have their own .grad, so there every op is its own node.
        self.share = share

    def add(self, op: str, args: tuple[int, ...] = (), **fields: Any) -> int:
        key = (op, args, fields.get("name"), fields.get("value"), type(fields.get("value")).__name__)
        if op in ("detach", "no_grad") or (not self.share and op not in ("var", "const")):
            key = key + (len(self.nodes),)  # each cut is its own node (they are regions)
        found = self.keys.get(key)
        if found is not None:
            return found
        if len(self.nodes) >= MAX_TRACE_NODES:
            raise LimitError(f"the traced computation has more than {MAX_TRACE_NODES:,} scalar operations",
                             "max_trace_nodes", len(self.nodes), MAX_TRACE_NODES,
                             hint="check a smaller input, or give the math with expected=")
        k = len(self.nodes)
        self.nodes.append(Node(id=k, op=op, args=args, origin=self.origin if op not in ("var", "const") else None,
                               **fields))
        self.keys[key] = k
        return k

    def var(self, name: str) -> _Sym:
        self.variables.append(name)
        return _Sym(self, self.add("var", name=name))

    def const(self, value: float | int) -> _Sym:
        value = float(value) if not isinstance(value, int) else value
        return _Sym(self, self.add("const", value=value))

    def sym(self, x: Any) -> _Sym:
        if isinstance(x, _Sym):
            return x
        if isinstance(x, (bool, np.bool_)):
            return self.const(int(x))
        if isinstance(x, (int, np.integer)):
            return self.const(int(x))
        return self.const(float(x))

    def op(self, name: str, *args: Any) -> _Sym:
        ids = tuple(self.sym(a).id for a in args)
        return _Sym(self, self.add(name, ids))


class _Sym:
    """One scalar of a mirrored tensor: a graph node, with arithmetic that makes nodes."""

    __slots__ = ("b", "id")

    def __init__(self, b: _Builder, k: int) -> None:
        self.b, self.id = b, k

    def __add__(self, o: Any) -> _Sym: return self.b.op("add", self, o)
    def __radd__(self, o: Any) -> _Sym: return self.b.op("add", o, self)
    def __sub__(self, o: Any) -> _Sym: return self.b.op("sub", self, o)
    def __rsub__(self, o: Any) -> _Sym: return self.b.op("sub", o, self)
    def __mul__(self, o: Any) -> _Sym: return self.b.op("mul", self, o)
    def __rmul__(self, o: Any) -> _Sym: return self.b.op("mul", o, self)
    def __truediv__(self, o: Any) -> _Sym: return self.b.op("div", self, o)
    def __rtruediv__(self, o: Any) -> _Sym: return self.b.op("div", o, self)
    def __pow__(self, o: Any) -> _Sym: return self.b.op("pow", self, o)
    def __rpow__(self, o: Any) -> _Sym: return self.b.op("pow", o, self)
    def __neg__(self) -> _Sym: return self.b.op("neg", self)


def _map(fn: Callable[..., Any], *arrays: Any) -> np.ndarray:
    """Apply `fn` element by element with numpy broadcasting; an object array back."""
    out = np.frompyfunc(fn, len(arrays), 1)(*arrays)
    return out if isinstance(out, np.ndarray) else np.array(out, dtype=object)


class _Unsupported(Exception):
    pass


# ---------------------------------------------------------------- the tracer
class _Tracer(TorchFunctionMode):
    def __init__(self, builder: _Builder) -> None:
        super().__init__()
        self.b = builder
        self.mirror: dict[int, np.ndarray] = {}
        self.alive: list[Any] = []  # keeps traced tensors alive, so that ids stay unique
        self.data_alias: dict[int, torch.Tensor] = {}  # id(t.data result) -> t
        self.items: dict[float, _Sym] = {}  # values taken out by .item()/.tolist()
        self.cut_nodes: dict[tuple[Any, ...], list[int]] = {}
        self.cut_meta: dict[tuple[Any, ...], tuple[str, str, int, str]] = {}  # key -> (kind, file, line, source)
        self.stale: list[Cut] = []
        self.custom_depth = 0
        self.custom_names: list[str] = []
        self.grad_region = 0  # bumped at every change of grad mode, to tell no_grad blocks apart
        self._last_grad = True

    # -- helpers
    def get(self, x: Any) -> Any:
        """The mirror of `x`: an object array for tensors, a `_Sym` for remembered item() values."""
        if isinstance(x, torch.Tensor):
            m = self.mirror.get(id(x))
            if m is not None:
                return m
            if x.is_floating_point() or x.dtype == torch.bool:
                values = x.detach().cpu().numpy()
                return _map(self.b.sym, values.astype(np.float64) if x.is_floating_point() else values)
            return x.detach().cpu().numpy()  # integer tensors: indices and labels, used as numbers
        if isinstance(x, float) and x in self.items:
            return self.items[x]
        if isinstance(x, (list, tuple)):
            return type(x)(self.get(v) for v in x)
        return x

    def set(self, t: Any, m: Any) -> None:
        if isinstance(t, torch.Tensor) and isinstance(m, np.ndarray):
            if m.shape != tuple(t.shape):
                m = np.broadcast_to(m, tuple(t.shape)) if m.size else m.reshape(tuple(t.shape))
            self.mirror[id(t)] = m
            self.alive.append(t)

    def _where(self) -> tuple[str, int, str]:
        frame = sys._getframe(2)
        while frame is not None and _internal(frame.f_code.co_filename):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return ("<unknown>", 0, "")
        file, line = frame.f_code.co_filename, frame.f_lineno
        return (file, line, linecache.getline(file, line).strip())

    def _cut(self, kind: str, m: np.ndarray, op: str = "detach") -> np.ndarray:
        file, line, source = self._where()
        # A no_grad block is one region however many ops run in it; other cuts are per line.
        key: tuple[Any, ...] = ("no_grad", self.grad_region) if kind == "no_grad" else (kind, file, line)
        nodes = self.cut_nodes.setdefault(key, [])
        self.cut_meta.setdefault(key, (kind, file, line, source))

        def one(s: Any) -> Any:
            if not isinstance(s, _Sym) or not self._tracked(s):
                return s
            k = self.b.add(op, (s.id,))
            nodes.append(k)
            return _Sym(self.b, k)

        return _map(one, m)

    def _tracked(self, s: _Sym) -> bool:
        return self.b.nodes[s.id].op not in ("const",)

    # -- the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch._C._set_grad_enabled or getattr(func, "__name__", "") == "_set_grad_enabled":
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        try:
            self._record(func, args, kwargs, out)
        except _Unsupported as exc:
            file, line, source = self._where()
            raise UnsupportedError(
                f"{os.path.basename(file)}:{line}: the tracer does not know {exc.args[0]} (in `{source}`)",
                "give the math instead: check_function(fn, x, expected=\"...\") (or --expect on the command line)",
            ) from None
        return out

    def _custom_forward(self) -> str | None:
        """The custom autograd.Function whose forward is running, if any (seen on the stack)."""
        frame = sys._getframe(3)
        while frame is not None:
            code = frame.f_code
            if code.co_name == "apply" and code.co_filename == _FUNCTION_PY:
                cls = frame.f_locals.get("cls")
                return getattr(cls, "__name__", "Function")
            frame = frame.f_back  # type: ignore[assignment]
        return None

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", str(func))
        custom = self._custom_forward()
        self.custom_depth = 1 if custom else 0
        if custom and custom not in self.custom_names:
            self.custom_names.append(custom)
        grad_on = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        if grad_on != self._last_grad:
            self.grad_region += 1
            self._last_grad = grad_on
        if func == torch.Tensor.data.__get__:
            (t,) = args
            self.data_alias[id(out)] = t
            self.alive.append(out)
            self.set(out, self._cut(".data", self.get(t)) if self.custom_depth == 0 else self.get(t))
            return
        if func == torch.Tensor.data.__set__:
            t, value = args
            if self.custom_depth == 0 and t.grad_fn is not None:
                self._stale(f"`.data` assignment to a tensor with a graph ({type(t.grad_fn).__name__})")
            self.set(t, self._cut(".data", self.get(value)) if self.custom_depth == 0 else self.get(value))
            return
        if name in ("item", "tolist"):
            m = self.get(args[0])
            if isinstance(m, np.ndarray) and self.custom_depth == 0:
                m = self._cut(f".{name}()", m)
            values = [out] if name == "item" else list(np.asarray(out, dtype=np.float64).flatten())
            for v, s in zip(values, np.asarray(m).flatten()):
                if isinstance(s, _Sym) and isinstance(v, float):
                    self.items[v] = s
            return
        tensors_out = _tensors(out)
        if not tensors_out or not any(t.is_floating_point() or t.dtype == torch.bool for t in tensors_out):
            return  # shapes, sizes, integer results: nothing to mirror
        if not _has_mirrored(self, args, kwargs):
            return  # built from constants only (torch.tensor, zeros, ...): read as constants when used
        handler = _HANDLERS.get(name)
        if handler is None:
            raise _Unsupported(f"torch op {name!r}")
        file, line, _ = self._where()
        self.b.origin = f"{os.path.basename(file)}:{line} {name}"
        result = handler(self, args, kwargs, out)
        if name.endswith("_") and not name.startswith("__") and isinstance(args[0], torch.Tensor):
            self._inplace(args[0], result)
            return
        if isinstance(out, torch.Tensor):
            if not grad_on and self.custom_depth == 0 and isinstance(result, np.ndarray):
                result = self._cut("no_grad", result, op="no_grad")
            self.set(out, result)
        else:  # (values, indices) of max/min/sort...: mirror the values
            self.set(tensors_out[0], result)

    def _inplace(self, t: torch.Tensor, result: np.ndarray) -> None:
        base = self.data_alias.get(id(t))
        self.set(t, result)
        if base is not None and self.custom_depth == 0:
            self.set(base, self._cut(".data", result))
            if base.grad_fn is not None or base.requires_grad:
                self._stale("in-place change through `.data`")

    def _stale(self, what: str) -> None:
        file, line, source = self._where()
        self.stale.append(Cut("stale-graph", file, line, f"{source}  ({what})", ()))


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


def _has_mirrored(tr: _Tracer, args: Any, kwargs: dict) -> bool:
    def walk(x: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return id(x) in tr.mirror
        if isinstance(x, float):
            return x in tr.items
        if isinstance(x, (list, tuple)):
            return any(walk(v) for v in x)
        return False

    return walk(args) or walk(list(kwargs.values()))


# ---------------------------------------------------------------- handlers
Handler = Callable[[_Tracer, tuple, dict, Any], np.ndarray]
_HANDLERS: dict[str, Handler] = {}


def _h(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            _HANDLERS[n] = fn
        return fn

    return deco


def _unary(opname: str) -> Handler:
    def h(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> np.ndarray:
        return _map(lambda a: tr.b.op(opname, a), tr.get(args[0]))

    return h


for _name, _op in {
    "sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "arcsin": "asin", "acos": "acos", "arccos": "acos",
    "atan": "atan", "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "asinh": "asinh",
    "arcsinh": "asinh", "acosh": "acosh", "arccosh": "acosh", "atanh": "atanh", "arctanh": "atanh", "exp": "exp",
    "expm1": "expm1", "log": "log", "log1p": "log1p", "log2": "log2", "log10": "log10", "sqrt": "sqrt",
    "abs": "abs", "absolute": "abs", "__abs__": "abs", "sign": "sign", "sgn": "sign", "floor": "floor",
    "ceil": "ceil", "erf": "erf", "erfc": "erfc", "sigmoid": "sigmoid", "relu": "relu", "lgamma": "lgamma",
    "digamma": "digamma", "neg": "neg", "negative": "neg", "__neg__": "neg",
}.items():
    _HANDLERS[_name] = _unary(_op)
    _HANDLERS[_name + "_"] = _unary(_op)


@_h("positive", "__pos__", "clone", "contiguous", "float", "double", "to", "type_as", "view_as", "requires_grad_",
    "cpu", "detach_copy", "alias")
def _identity(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> np.ndarray:
    m = tr.get(args[0])
    return m if isinstance(m, np.ndarray) else np.array(m, dtype=object)


@_h("rsqrt", "rsqrt_")
def _rsqrt(tr, args, kwargs, out):
    return _map(lambda a: 1 / tr.b.op("sqrt", a), tr.get(args[0]))


@_h("reciprocal", "reciprocal_")
def _reciprocal(tr, args, kwargs, out):
    return _map(lambda a: 1 / tr.b.sym(a), tr.get(args[0]))


@_h("square", "square_")
def _square(tr, args, kwargs, out):
    return _map(lambda a: tr.b.sym(a) ** 2, tr.get(args[0]))


@_h("exp2")
def _exp2(tr, args, kwargs, out):
    return _map(lambda a: 2 ** tr.b.sym(a), tr.get(args[0]))


@_h("silu")
def _silu(tr, args, kwargs, out):
    return _map(lambda a: a * tr.b.op("sigmoid", a), tr.get(args[0]))


@_h("softplus")
def _softplus(tr, args, kwargs, out):
    beta = kwargs.get("beta", args[1] if len(args) > 1 else 1)
    if beta != 1:
        return _map(lambda a: tr.b.op("softplus", a * beta) / beta, tr.get(args[0]))
    return _map(lambda a: tr.b.op("softplus", a), tr.get(args[0]))


@_h("gelu")
def _gelu(tr, args, kwargs, out):
    if kwargs.get("approximate", "none") != "none":
        raise _Unsupported("gelu(approximate='tanh')")
    return _map(lambda a: tr.b.op("gelu", a), tr.get(args[0]))


def _binary(opname: str, swap: bool = False) -> Handler:
    def h(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> np.ndarray:
        a, b = tr.get(args[0]), tr.get(args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("exponent")))
        alpha = kwargs.get("alpha")
        if alpha is not None and alpha != 1:
            b = _map(lambda v: v * alpha, b)
        if swap:
            a, b = b, a
        return _map(lambda x, y: tr.b.op(opname, x, y), a, b)

    return h


for _names, _op, _swap in [
    (("add", "__add__", "__iadd__", "add_"), "add", False), (("__radd__",), "add", True),
    (("sub", "subtract", "__sub__", "__isub__", "sub_"), "sub", False), (("__rsub__", "rsub"), "sub", True),
    (("mul", "multiply", "__mul__", "__imul__", "mul_"), "mul", False), (("__rmul__",), "mul", True),
    (("true_divide", "__truediv__", "__itruediv__", "__div__", "div_"), "div", False),
    (("__rtruediv__", "__rdiv__"), "div", True),
    (("pow", "__pow__", "__ipow__", "pow_", "float_power"), "pow", False), (("__rpow__",), "pow", True),
    (("remainder", "__mod__"), "mod", False), (("__rmod__",), "mod", True),
    (("atan2", "arctan2"), "atan2", False), (("hypot",), "hypot", False),
    (("maximum", "fmax"), "max", False), (("minimum", "fmin"), "min", False), (("logaddexp",), "logaddexp", False),
    (("gt", "__gt__", "greater"), "gt", False), (("ge", "__ge__", "greater_equal"), "ge", False),
    (("lt", "__lt__", "less"), "lt", False), (("le", "__le__", "less_equal"), "le", False),
    (("eq", "__eq__"), "eq", False), (("ne", "__ne__", "not_equal"), "ne", False),
]:
    for _n in _names:
        _HANDLERS[_n] = _binary(_op, _swap)


@_h("div", "divide")
def _div(tr, args, kwargs, out):
    if kwargs.get("rounding_mode") is not None:
        raise _Unsupported(f"div(rounding_mode={kwargs['rounding_mode']!r})")
    return _binary("div")(tr, args, kwargs, out)


@_h("where")
def _where_h(tr, args, kwargs, out):
    def one(c: Any, x: Any, y: Any) -> Any:
        if isinstance(c, _Sym) and tr.b.nodes[c.id].op in ("gt", "ge", "lt", "le", "eq", "ne"):
            return tr.b.op("where", c, x, y)
        if isinstance(c, _Sym):  # a constant condition
            c = tr.b.nodes[c.id].value
        return x if bool(c) else y

    return _map(one, *(tr.get(x) for x in args[:3]))


@_h("clamp", "clip", "clamp_", "clip_")
def _clamp(tr, args, kwargs, out):
    x = tr.get(args[0])
    lo = tr.get(kwargs.get("min", args[1] if len(args) > 1 else None))
    hi = tr.get(kwargs.get("max", args[2] if len(args) > 2 else None))
    if lo is not None and hi is not None:
        return _map(lambda v, a, b: tr.b.op("clamp", v, a, b), x, lo, hi)
    if lo is not None:
        return _map(lambda v, a: tr.b.op("clamp", v, a, math.inf), x, lo)
    return _map(lambda v, b: tr.b.op("clamp", v, -math.inf, b), x, hi)


@_h("clamp_min")
def _clamp_min(tr, args, kwargs, out):
    return _map(lambda v, a: tr.b.op("clamp", v, a, math.inf), tr.get(args[0]), tr.get(args[1]))


@_h("clamp_max")
def _clamp_max(tr, args, kwargs, out):
    return _map(lambda v, b: tr.b.op("clamp", v, -math.inf, b), tr.get(args[0]), tr.get(args[1]))


# -- reductions
def _dims(x: np.ndarray, dim: Any) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % max(x.ndim, 1) for d in dims)


def _reduce(x: np.ndarray, dim: Any, keepdim: bool, fold: Callable[[list[Any]], Any]) -> np.ndarray:
    x = np.asarray(x, dtype=object)
    if x.ndim == 0:
        return np.array(fold([x.item()]), dtype=object)
    dims = _dims(x, dim)
    rest = [d for d in range(x.ndim) if d not in dims]
    moved = np.transpose(x, rest + list(dims))
    flat = moved.reshape(moved.shape[: len(rest)] + (-1,))
    out = np.empty(flat.shape[:-1], dtype=object)
    for idx in np.ndindex(*out.shape):
        out[idx] = fold(list(flat[idx]))
    if keepdim:
        for d in sorted(dims):
            out = np.expand_dims(out, d)
    return out


def _sum_fold(tr: _Tracer) -> Callable[[list[Any]], Any]:
    return lambda xs: functools.reduce(lambda a, b: a + b, xs) if xs else tr.b.const(0)


def _red_args(args: tuple, kwargs: dict) -> tuple[Any, bool]:
    dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], torch.dtype) else None)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    return dim, bool(keepdim)


@_h("sum", "nansum")
def _sum(tr, args, kwargs, out):
    dim, keep = _red_args(args, kwargs)
    return _reduce(tr.get(args[0]), dim, keep, _sum_fold(tr))


@_h("mean")
def _mean(tr, args, kwargs, out):
    dim, keep = _red_args(args, kwargs)
    x = np.asarray(tr.get(args[0]), dtype=object)
    count = int(np.prod([x.shape[d] for d in _dims(x, dim)])) if x.ndim else 1
    return _reduce(x, dim, keep, lambda xs: _sum_fold(tr)(xs) / count)


@_h("prod")
def _prod(tr, args, kwargs, out):
    dim, keep = _red_args(args, kwargs)
    return _reduce(tr.get(args[0]), dim, keep, lambda xs: functools.reduce(lambda a, b: a * b, xs))


def _extreme(opname: str) -> Handler:
    def h(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> np.ndarray:
        if len(args) > 1 and isinstance(args[1], torch.Tensor):  # max(a, b): elementwise
            return _binary(opname)(tr, args, kwargs, out)
        dim, keep = _red_args(args, kwargs)
        return _reduce(tr.get(args[0]), dim, keep, lambda xs: functools.reduce(lambda a, b: tr.b.op(opname, a, b), xs))

    return h


_HANDLERS["amax"] = _HANDLERS["max"] = _extreme("max")
_HANDLERS["amin"] = _HANDLERS["min"] = _extreme("min")


@_h("logsumexp")
def _logsumexp(tr, args, kwargs, out):
    dim, keep = _red_args(args, kwargs)
    return _reduce(tr.get(args[0]), dim, keep,
                   lambda xs: tr.b.op("log", _sum_fold(tr)([tr.b.op("exp", v) for v in xs])))


@_h("norm", "vector_norm")
def _norm(tr, args, kwargs, out):
    p = kwargs.get("p", kwargs.get("ord", args[1] if len(args) > 1 and not isinstance(args[1], (int,)) or (
        len(args) > 1 and isinstance(args[1], (int, float)) and not isinstance(args[1], bool)) else 2))
    p = 2 if p in (None, "fro") else p
    dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    keep = bool(kwargs.get("keepdim", args[3] if len(args) > 3 else False))
    if p == 2:
        return _reduce(tr.get(args[0]), dim, keep,
                       lambda xs: tr.b.op("sqrt", _sum_fold(tr)([tr.b.sym(v) ** 2 for v in xs])))
    if p == 1:
        return _reduce(tr.get(args[0]), dim, keep, lambda xs: _sum_fold(tr)([tr.b.op("abs", v) for v in xs]))
    raise _Unsupported(f"norm(p={p!r})")


def _softmax_impl(tr: _Tracer, x: np.ndarray, dim: int, log: bool) -> np.ndarray:
    x = np.asarray(x, dtype=object)
    dim = dim % x.ndim
    moved = np.moveaxis(x, dim, -1)
    out = np.empty(moved.shape, dtype=object)
    for idx in np.ndindex(*moved.shape[:-1]):
        row = list(moved[idx])
        lse = tr.b.op("log", _sum_fold(tr)([tr.b.op("exp", v) for v in row]))
        out[idx] = [(v - lse) if log else tr.b.op("exp", v - lse) for v in row]
    return np.moveaxis(out, -1, dim)


def _softmax_handler(log: bool) -> Handler:
    def h(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> np.ndarray:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            raise _Unsupported("softmax without dim")
        return _softmax_impl(tr, tr.get(args[0]), dim, log)

    return h


_HANDLERS["softmax"] = _softmax_handler(False)
_HANDLERS["log_softmax"] = _softmax_handler(True)


# -- linear algebra
@_h("matmul", "__matmul__", "mm", "bmm", "mv", "dot", "inner")
def _matmul(tr, args, kwargs, out):
    return np.asarray(np.matmul(tr.get(args[0]), tr.get(args[1])), dtype=object)


@_h("__rmatmul__")
def _rmatmul(tr, args, kwargs, out):
    return np.asarray(np.matmul(tr.get(args[1]), tr.get(args[0])), dtype=object)


@_h("linear")
def _linear(tr, args, kwargs, out):
    x, w = tr.get(args[0]), tr.get(args[1])
    bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
    y = np.asarray(np.matmul(x, np.swapaxes(w, -1, -2) if w.ndim > 1 else w), dtype=object)
    if bias is not None:
        y = _map(lambda a, b: a + b, y, tr.get(bias))
    return y


@_h("addmm")
def _addmm(tr, args, kwargs, out):
    y = np.asarray(np.matmul(tr.get(args[1]), tr.get(args[2])), dtype=object)
    return _map(lambda a, b: a + b, y, tr.get(args[0]))


# -- shapes
def _shape_args(args: tuple, start: int) -> tuple[int, ...]:
    rest = args[start:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        return tuple(rest[0])
    return tuple(rest)


@_h("reshape", "view")
def _reshape(tr, args, kwargs, out):
    return np.asarray(tr.get(args[0]), dtype=object).reshape(tuple(out.shape))


@_h("flatten", "ravel", "squeeze", "unsqueeze", "view_as", "reshape_as", "expand", "expand_as", "broadcast_to",
    "squeeze_", "unsqueeze_")
def _to_out_shape(tr, args, kwargs, out):
    x = np.asarray(tr.get(args[0]), dtype=object)
    if x.size == out.numel():
        return x.reshape(tuple(out.shape))
    return np.broadcast_to(x, tuple(out.shape))


@_h("transpose", "swapaxes", "swapdims")
def _transpose(tr, args, kwargs, out):
    x = np.asarray(tr.get(args[0]), dtype=object)
    d0 = kwargs.get("dim0", args[1]) if len(args) > 1 or "dim0" in kwargs else 0
    d1 = kwargs.get("dim1", args[2]) if len(args) > 2 or "dim1" in kwargs else 1
    return np.swapaxes(x, d0, d1)


@_h("t")
def _t(tr, args, kwargs, out):
    return np.asarray(tr.get(args[0]), dtype=object).T


@_h("permute")
def _permute(tr, args, kwargs, out):
    return np.transpose(np.asarray(tr.get(args[0]), dtype=object), _shape_args(args, 1) or kwargs.get("dims"))


@_h("__get__")
def _property(tr, args, kwargs, out):  # .T, .mT and other tensor-valued properties
    x = np.asarray(tr.get(args[0]), dtype=object)
    if tuple(out.shape) == tuple(reversed(x.shape)):
        return x.T
    if x.ndim >= 2 and tuple(out.shape) == x.shape[:-2] + (x.shape[-1], x.shape[-2]):
        return np.swapaxes(x, -1, -2)
    if tuple(out.shape) == x.shape:
        return x
    raise _Unsupported("this tensor property")


@_h("cat", "concat", "concatenate")
def _cat(tr, args, kwargs, out):
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    parts = [np.asarray(tr.get(t), dtype=object) for t in args[0]]
    return np.concatenate(parts, axis=dim)


@_h("stack")
def _stack(tr, args, kwargs, out):
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    return np.stack([np.asarray(tr.get(t), dtype=object) for t in args[0]], axis=dim)


def _index(tr: _Tracer, key: Any) -> Any:
    if isinstance(key, tuple):
        return tuple(_index(tr, k) for k in key)
    if isinstance(key, torch.Tensor):
        return key.detach().cpu().numpy()
    return key


@_h("__getitem__")
def _getitem(tr, args, kwargs, out):
    x = np.asarray(tr.get(args[0]), dtype=object)
    return np.asarray(x[_index(tr, args[1])], dtype=object)


@_h("__setitem__")
def _setitem(tr, args, kwargs, out):
    raise _Unsupported("assignment into a tensor (x[i] = ...)")


# -- losses
@_h("mse_loss")
def _mse(tr, args, kwargs, out):
    a, b = tr.get(args[0]), tr.get(args[1])
    sq = np.asarray(_map(lambda u, v: (u - v) ** 2, a, b), dtype=object)
    reduction = kwargs.get("reduction", "mean")
    if reduction == "none":
        return sq
    total = _sum_fold(tr)(list(sq.flatten()))
    return np.array(total / sq.size if reduction == "mean" else total, dtype=object)


@_h("cross_entropy")
def _cross_entropy(tr, args, kwargs, out):
    logits = np.asarray(tr.get(args[0]), dtype=object)
    target = args[1]
    if not isinstance(target, torch.Tensor) or target.is_floating_point():
        raise _Unsupported("cross_entropy with probability targets")
    if any(kwargs.get(k) not in (None, d) for k, d in (("weight", None), ("label_smoothing", 0.0))):
        raise _Unsupported("cross_entropy with weight or label_smoothing")
    logp = _softmax_impl(tr, logits, 1 if logits.ndim > 1 else 0, True)
    t = target.detach().cpu().numpy()
    picked = [-logp[i, int(t[i])] for i in range(len(t))] if logits.ndim > 1 else [-logp[int(t)]]
    reduction = kwargs.get("reduction", "mean")
    if reduction == "none":
        return np.array(picked, dtype=object)
    total = _sum_fold(tr)(picked)
    return np.array(total / len(picked) if reduction == "mean" else total, dtype=object)


@_h("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros", "new_ones",
    "new_full", "new_tensor")
def _constant_like(tr, args, kwargs, out):
    """Shaped like a traced tensor, but not computed from its values: constants."""
    return _map(tr.b.sym, out.detach().cpu().numpy().astype(np.float64))


# -- cuts
@_h("detach", "detach_")
def _detach(tr, args, kwargs, out):
    m = tr.get(args[0])
    return tr._cut("detach", m) if tr.custom_depth == 0 else m


# ---------------------------------------------------------------- running it
def trace_function(
    fn: Callable[..., Any],
    inputs: Sequence[tuple[str, torch.Tensor]],
    constants: Sequence[Any] = (),
    *,
    params: Sequence[tuple[str, torch.Tensor]] = (),
    call: Callable[[Sequence[torch.Tensor]], Any] | None = None,
) -> Trace:
    """Run `fn` once on `inputs` and record its computation as a scalar graph.

    Args:
        fn: the function (or module).
        inputs: (name, tensor) of each differentiable input, in call order.
        constants: the other positional arguments, passed as they are.
        params: (name, tensor) of module parameters, also differentiable.
        call: how to call it with the differentiable tensors (default ``fn(*inputs)``).

    Raises:
        FunctionError: the function raised (with its own traceback).
        UnsupportedError: an op the tracer cannot mirror (names it and its line).
        LimitError: more than `MAX_INPUT_ELEMENTS` input elements or `MAX_TRACE_NODES` nodes.
    """
    total = sum(t.numel() for _, t in list(inputs) + list(params))
    if total > MAX_INPUT_ELEMENTS:
        raise LimitError(f"the inputs have {total:,} scalar elements; the tracer's limit is {MAX_INPUT_ELEMENTS:,}",
                         "max_input_elements", total, MAX_INPUT_ELEMENTS,
                         hint="check a smaller input (the math does not depend on the size)")
    b = _Builder()
    tracer = _Tracer(b)
    tensors = []
    shapes = []
    for name, t in list(inputs) + list(params):
        leaf = t.detach().clone().requires_grad_(True)
        names = [_element_name(name, idx, t.dim()) for idx in np.ndindex(*t.shape)]
        m = np.empty(tuple(t.shape), dtype=object)
        for idx, nm in zip(np.ndindex(*t.shape), names):
            m[idx] = b.var(nm)
        tracer.set(leaf, m)
        tensors.append(leaf)
        shapes.append((name, tuple(t.shape), names))
    try:
        with tracer:
            out = call(tensors) if call is not None else fn(*tensors, *constants)
    except GradcheckSymError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's own error, reported with their traceback
        raise FunctionError(exc) from None
    outs = check_outputs(out)
    output_ids: list[int] = []
    for t in outs:
        m = np.asarray(tracer.get(t), dtype=object)
        for s in m.flatten():
            output_ids.append(b.sym(s).id)
    cuts = [Cut(*tracer.cut_meta[key], tuple(nodes)) for key, nodes in tracer.cut_nodes.items() if nodes]
    graph = Graph(tuple(b.nodes), output_ids[0], tuple(b.variables))
    graph.validate()
    return Trace(graph, [(n, s, nm) for n, s, nm in shapes], output_ids, [tuple(t.shape) for t in outs], cuts,
                 tracer.stale, sorted(set(tracer.custom_names)))


def check_outputs(out: Any) -> list[torch.Tensor]:
    """The function's output as a list of floating tensors, or a clear error."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs:
        raise UnsupportedError("the function returned nothing to differentiate", "return a tensor or a tuple of tensors")
    for i, t in enumerate(outs):
        if not isinstance(t, torch.Tensor):
            raise UnsupportedError(f"output {i} is a {type(t).__name__}, not a tensor",
                                   "return a tensor or a tuple of tensors")
        if t.is_complex():
            raise UnsupportedError(f"output {i} is complex ({t.dtype}); the checker works with real numbers",
                                   "return the real and imaginary parts as two real outputs")
        if not t.is_floating_point():
            raise UnsupportedError(f"output {i} has dtype {t.dtype}, which has no gradient",
                                   "return a floating-point tensor")
    return outs


def _element_name(name: str, idx: tuple[int, ...], ndim: int) -> str:
    if ndim == 0:
        return name
    return f"{name}[{','.join(str(i) for i in idx)}]"
