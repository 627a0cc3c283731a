"""What the tracer reads off one torch call: which calls pass unrecorded, the op's name, its tensors.

`__torch_function__` sees ``Tensor.__radd__``, ``add_`` and ``F.relu(x, inplace=True)`` alike:
`_normalise` turns each into the op table's name, whether it writes in place and whether its
arguments are swapped; the sets below say which calls only read metadata, which properties
give tensors, which are casts and which draw random numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from ..ops.core import leaves

__all__ = ["foreign_types"]

# Calls that read metadata or manage state: never recorded.
_PASS = {"size", "dim", "numel", "stride", "storage_offset", "is_contiguous", "is_floating_point", "is_complex",
         "element_size", "nelement", "ndimension", "data_ptr", "get_device", "untyped_storage", "_is_view",
         "is_set_to", "has_names", "__len__", "__bool__", "__int__", "__float__", "__index__", "__format__",
         "__repr__", "__str__", "__hash__", "__iter__", "__contains__", "__reduce_ex__", "__deepcopy__", "__array__",
         "__setstate__", "_set_grad_enabled", "register_hook", "retain_grad", "backward", "grad", "is_leaf",
         "requires_grad_", "__torch_function__", "equal", "allclose", "isclose", "_version", "is_nonzero",
         "is_same_size", "type", "__dlpack__", "__dlpack_device__", "__array_wrap__", "__array_priority__"}
# The profiler's markers (an optimizer's step and zero_grad open one each): no tensor, nothing to note; called
# straight through.
_QUIET = {"_record_function_enter_new", "_record_function_enter", "_record_function_exit"}
_PROPERTY_TENSORS = {"T", "mT", "H", "mH", "real", "data"}
_CASTS = {"to", "float", "double", "half", "bfloat16", "type", "type_as", "copy"}
# Ops that draw random numbers: the generator state before them is kept, so a rule can replay the draw.
_RANDOM = {"dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
           "feature_alpha_dropout", "rrelu", "bernoulli", "normal", "native_dropout", "fractional_max_pool2d",
           "fractional_max_pool3d", "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices",
           "scaled_dot_product_attention", "multi_head_attention_forward",
           "lstm", "gru", "rnn_tanh", "rnn_relu",  # (the recurrent layers: dropout between their layers)
           "gumbel_softmax"}


def foreign_types(types: Any) -> str:
    """The names of the tensor subclasses among a call's `types` ("" when all are plain tensors)."""
    for t in types or ():  # (asked for every op a script makes: plain tensors and parameters decided at once)
        if t is not torch.Tensor and t is not torch.nn.Parameter:
            break
    else:
        return ""
    names = [t.__name__ for t in types or () if t is not torch.Tensor and not issubclass(t, torch.nn.Parameter)]
    return ", ".join(sorted(set(names)))


def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or type(func).__name__


def _normalise(name: str) -> tuple[str, bool, bool]:
    """(base op name, in place?, arguments swapped?)."""
    if name.startswith("__i") and name.endswith("__") and name not in ("__index__", "__int__", "__invert__"):
        return name[3:-2], True, False
    if name.startswith("__r") and name.endswith("__") and name not in ("__repr__", "__reduce_ex__"):
        base = name[3:-2]
        return {"div": "true_divide", "truediv": "true_divide", "sub": "sub", "add": "add", "mul": "mul",
                "pow": "pow", "matmul": "matmul", "mod": "remainder", "and": "bitwise_and",
                "or": "bitwise_or", "xor": "bitwise_xor", "floordiv": "floor_divide"}.get(base, base), False, True
    if name == "__setitem__":  # x[i] = v: an in-place write into x
        return name, True, False
    if name.startswith("__") and name.endswith("__"):
        base = name[2:-2]
        known = {"add": "add", "sub": "sub", "mul": "mul", "truediv": "true_divide", "div": "true_divide",
                 "pow": "pow", "matmul": "matmul", "neg": "neg", "pos": "positive", "abs": "abs",
                 "mod": "remainder", "floordiv": "floor_divide", "and": "bitwise_and", "or": "bitwise_or",
                 "xor": "bitwise_xor", "invert": "bitwise_not", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le",
                 "eq": "eq", "ne": "ne"}
        return known.get(base, name), False, False
    if name.endswith("_") and not name.endswith("__") and len(name) > 1:
        return name[:-1], True, False
    return name, False, False


def _dtype_name(t: Any) -> str:
    return str(getattr(t, "dtype", "float64")).replace("torch.", "")


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


_walk = leaves  # the arguments' leaves, in order
