"""Task functions for the process-pool tests: module-level, so the workers can import them by name."""

import os
import signal
import time
from pathlib import Path

from gradcheck_sym.scale.guard import deadline


def square(task):
    return task * task


def die_once(task):
    """Kills its own worker the first time (a marker file remembers), then answers."""
    marker = Path(task["marker"])
    if task.get("die") and not marker.exists():
        marker.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return task["value"]


def always_exit(task):
    if task.get("die"):
        os._exit(3)
    return task["value"]


def spin(task):
    """A Python loop the deadline can stop (between bytecodes)."""
    with deadline(task["deadline"]):
        while True:
            pass


def sleep(task):
    """A C call the deadline cannot interrupt: only the pool's kill stops it."""
    time.sleep(task)
    return task
