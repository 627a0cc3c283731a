"""Checking at scale: many checks on all cores or a Dask cluster, in input order, resumable.

- `execute`: `run_tasks` over the process pool (`pool`), any ``concurrent.futures.Executor``
  or a Dask ``distributed.Client``;
- `guard`: what each task runs under (one thread, seeded, a deadline), so results do not
  depend on where they ran;
- `batch`: rows of expressions → `CheckResult`s (`check_many`, ``gradcheck-sym batch``);
- `output`: JSON Lines in input order and ``--resume``; `progress`: the progress bar.
"""

from .batch import CheckResult, check_many
from .execute import SerialExecutor, run_tasks
from .pool import ProcessPool, TaskFailure

__all__ = ["check_many", "CheckResult", "SerialExecutor", "ProcessPool", "TaskFailure", "run_tasks"]
