"""Python's cyclic garbage collector during a check: the objects that lived before it are not rescanned.

A check of a 10,000-node expression builds some 100,000 objects that stay alive until it ends
(tensors, the reference's closures, the compared quantities).  Their growth triggers full
collections, and each full collection walks every object of the process -- torch's and sympy's
modules and caches included: five of them were 0.5-0.7 s of a 2 s check (measured with
``gc.callbacks``).  `frozen_before` moves the objects that exist when the check starts to the
collector's permanent generation (``gc.freeze``) and gives them back when it ends
(``gc.unfreeze``), so full collections during the check walk the check's own objects only.

The check's own cyclic garbage is collected before the objects are given back (a full collection then walks
the check's objects only: 0.2 ms after a million-point check).  Left to the collector's next full collection,
it was not collected for a long time: the objects given back count as long-lived, and a full collection waits
until a quarter as many again are made.  A million-point check left some 80 unreachable objects in cycles
holding its tensors, and a loop of checks grew by 60 MB each (2.3 GB after 30).  Garbage that existed before
the check is collected after it.  The collector's state is process-wide, so this is done only when nobody
else froze anything (``gc.get_freeze_count() == 0``: a program's own ``gc.freeze()`` is left as it
is) and with the collector enabled; concurrent checks share one freeze, undone when the last ends.
While it lasts, ``gc.get_objects()`` and ``gc.get_referrers()`` in the program's other threads do not see
the frozen objects, and a ``gc.freeze()`` made by another thread is undone with ours.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

__all__ = ["frozen_before"]

_LOCK = threading.Lock()
_state = {"depth": 0, "ours": False}


@contextlib.contextmanager
def frozen_before() -> Iterator[None]:
    """Within the block, full garbage collections skip the objects that existed before it.

    Example:
        >>> with frozen_before():
        ...     pass
    """
    entered = False
    try:
        with _LOCK:
            _state["depth"] += 1
            entered = True
            if _state["depth"] == 1:
                _state["ours"] = gc.isenabled() and gc.get_freeze_count() == 0
                if _state["ours"]:
                    gc.freeze()
        yield
    finally:
        if entered:  # (an interruption before the count went up undoes nothing it did not do)
            with _LOCK:
                _state["depth"] -= 1
                if _state["depth"] == 0 and _state["ours"]:
                    _state["ours"] = False
                    try:
                        gc.collect()  # (the block's own garbage: the frozen objects are not walked)
                    finally:
                        gc.unfreeze()
