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


def start_pool_and_die(task):
    """In a child process: start a pool, give its worker a long task, then die without cleaning up."""
    from gradcheck_sym.scale import ProcessPool

    pool = ProcessPool(1)
    pool.start()
    pid = pool.pids[0]
    pool._workers[0].conn.send((0, sleep, 600))
    Path(task).write_text(str(pid))
    os._exit(0)


def busyloop(n):
    s = 0
    for i in range(n):
        s += i
    return s


def dask_round_trip(rows_path: str, out_dir: str) -> None:
    """In a process of its own (the test's process never loads distributed, whose threads outlive a closed
    cluster): a real LocalCluster, `check_many` through a Client and `batch --scheduler`, outputs to files."""
    import json

    import distributed

    import gradcheck_sym as gs
    from gradcheck_sym.cli import main
    from gradcheck_sym.scale.batch import result_line

    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines()]
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                       silence_logs=50)
    try:
        with distributed.Client(cluster) as client:
            results = gs.check_many(rows, executor=client, chunksize=2)
        Path(out_dir, "client.jsonl").write_text("".join(result_line(r) for r in results))
        head = Path(out_dir, "rows4.jsonl")
        head.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
        code = main(["batch", str(head), "-o", str(Path(out_dir, "batch.jsonl")), "--scheduler",
                     cluster.scheduler_address])
        Path(out_dir, "code").write_text(str(code))
    finally:
        cluster.close()


def allocate(task):
    """Allocates `gib` GiB (a runaway check), or nothing."""
    block = bytearray(task["gib"] << 30)
    return len(block) >> 30 if task["gib"] == 0 else len(block)
