"""Checking at scale: the process pool (real workers, really killed), executors, Dask, batch, resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gradcheck_sym as gs
from gradcheck_sym.cli import main
from gradcheck_sym.scale import ProcessPool, SerialExecutor, TaskFailure
from gradcheck_sym.scale.batch import make_tasks, result_line, run_expression
from gradcheck_sym.scale.guard import TaskTimeout, deadline, stable_seed

from . import scale_tasks
from .conftest import corpus_entries

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"id": e["id"], "expr": e["expr"], "vars": e["vars"], "samples": 10} for e in corpus_entries()[::20]]


def lines(results):
    return "".join(result_line(r) for r in results)


@pytest.fixture(scope="module")
def serial_output():
    """The reference: every row run here, one after the other."""
    return lines(gs.check_many(ROWS, executor=SerialExecutor()))


# -- the guard ---------------------------------------------------------------------------------------------------


def test_stable_seed_is_the_same_in_every_process():
    assert stable_seed("a", 1) == stable_seed("a", 1) == 2752618115
    assert stable_seed("a", 1) != stable_seed("a", 2)


def test_deadline_stops_a_python_loop_and_leaves_nothing_pending():
    start = time.perf_counter()
    with pytest.raises(TaskTimeout):
        with deadline(0.2):
            while True:
                pass
    assert time.perf_counter() - start < 2
    with deadline(5):
        pass
    time.sleep(0.05)  # a timer that did not fire raises nothing later


# -- the process pool: real workers -------------------------------------------------------------------------------


def test_pool_runs_every_task_once():
    with ProcessPool(2) as pool:
        got = dict(pool.run(scale_tasks.square, list(range(7))))
    assert got == {i: i * i for i in range(7)}


def test_a_killed_worker_loses_only_its_task_which_is_re_run(tmp_path):
    tasks = [{"value": i, "marker": str(tmp_path / "m"), "die": i == 2} for i in range(6)]
    with ProcessPool(2) as pool:
        got = dict(pool.run(scale_tasks.die_once, tasks))
        assert pool.restarts == 1
    assert got == {i: i for i in range(6)}
    assert (tmp_path / "m").read_text() == "died"


def test_a_task_that_kills_its_worker_twice_is_reported_and_the_rest_complete():
    tasks = [{"value": i, "die": i == 1} for i in range(4)]
    with ProcessPool(2) as pool:
        got = dict(pool.run(scale_tasks.always_exit, tasks))
    assert got[1] == TaskFailure("crashed", "its worker process died (exit code 3) 2 times while running it")
    assert {i: got[i] for i in (0, 2, 3)} == {0: 0, 2: 2, 3: 3}


def test_timeouts_soft_inside_the_task_and_hard_by_killing_the_worker():
    with ProcessPool(1) as pool:
        got = dict(pool.run(scale_tasks.spin, [{"deadline": 0.3}]))
    assert got == {0: TaskFailure("timeout", "the task ran past its deadline")}
    with ProcessPool(2, timeout=0.2, grace=0.3) as pool:
        start = time.perf_counter()
        got = dict(pool.run(scale_tasks.sleep, [30, 0.01]))
        assert time.perf_counter() - start < 10
    assert got == {0: TaskFailure("timeout", "no answer within 0.2 s (+0.3 s grace): its worker was killed"),
                   1: 0.01}


def test_workers_exit_when_the_process_that_started_them_dies(tmp_path):
    import multiprocessing

    marker = tmp_path / "pid"
    owner = multiprocessing.get_context("spawn").Process(target=scale_tasks.start_pool_and_die, args=(str(marker),))
    owner.start()
    owner.join(60)
    worker = int(marker.read_text())
    deadline_ = time.monotonic() + 60  # the owner's forkserver may still be importing torch when it dies
    while time.monotonic() < deadline_:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived the process that started it")


def test_a_worker_killed_from_outside_mid_run_changes_no_result(serial_output):
    tasks = make_tasks(ROWS)
    results = [None] * len(tasks)
    killed = []
    with ProcessPool(2) as pool:
        for n, (i, r) in enumerate(pool.run(run_expression, tasks)):
            results[i] = r
            # from the third result on, at the first moment a worker is busy (between two results both may be
            # idle for an instant: the kill waited for that on a loaded machine)
            busy = pool.busy_pids() if n >= 2 and not killed else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
        assert pool.restarts >= 1
    assert killed and lines(results) == serial_output


# -- executors: the same bytes whatever runs them -----------------------------------------------------------------


def test_check_many_gives_the_same_bytes_on_any_executor_workers_or_chunking(serial_output):
    assert lines(gs.check_many(ROWS, workers=2)) == serial_output
    assert lines(gs.check_many(ROWS, workers=1)) == serial_output
    with ThreadPoolExecutor(2) as ex:
        assert lines(gs.check_many(ROWS, executor=ex, chunksize=3)) == serial_output


def test_check_many_results():
    rows = [{"id": "a", "expr": "sin(x)", "at": {"x": 0.5}}, {"id": 7, "expr": "x*detach(tanh(x))", "at": {"x": 0.5}},
            {"id": "c", "expr": "sinn(x)", "at": {"x": 1}}]
    a, b, c = gs.check_many(rows, executor=SerialExecutor())
    assert (a.id, a.status, a.ok, a.report.checked) == ("a", "ok", True, 2)
    assert (b.id, b.status, b.ok, [f.kind for f in b.report.errors()]) == (7, "failed", False, ["untracked"])
    assert (c.status, c.ok, c.error_type) == ("error", None, "UnknownFunctionError")
    assert c.to_dict()["error"]["message"].startswith("unknown function 'sinn'")


def test_a_row_past_its_timeout_is_reported():
    (r,) = gs.check_many([{"id": "big", "expr": "sin(x)*exp(x)", "domain": {"x": [0, 1]}, "samples": 3_000_000}],
                         executor=SerialExecutor(), timeout=0.05)
    assert (r.status, r.error) == ("timeout", "the check ran past the 0.05 s timeout")


def test_a_dask_cluster_gives_the_same_bytes(serial_output, tmp_path):
    pytest.importorskip("distributed")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    code = f"from tests import scale_tasks; scale_tasks.dask_round_trip({str(rows)!r}, {str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "client.jsonl").read_text() == serial_output
    assert (tmp_path / "code").read_text() == "0"
    assert (tmp_path / "batch.jsonl").read_text() == "".join(serial_output.splitlines(keepends=True)[:4])


# -- gradcheck-sym batch ------------------------------------------------------------------------------------------


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_batch_writes_one_line_per_row_in_input_order_and_a_summary(rows_file, tmp_path, capsys, serial_output):
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(rows_file), "-o", str(out), "--workers", "2"]) == 0
    assert out.read_text() == serial_output
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [r["id"] for r in ROWS]
    summary = capsys.readouterr().out
    assert summary.startswith(f"gradcheck-sym batch: {len(ROWS)} rows checked in ")
    assert summary.endswith(f" s: {len(ROWS)} ok; results in {out}\n")


def test_batch_exit_codes_and_csv(tmp_path, capsys):
    csv = tmp_path / "rows.csv"
    csv.write_text('id,expr,at,domain,samples,seed\n'
                   'ok,sin(x)*y,"x=0.5,y=2",,,\n'
                   'cut,x*detach(tanh(x)),x=0.5,,,\n'
                   'box,log(x),,x=0.5:2,10,3\n')
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(csv), "-o", str(out), "--workers", "1"]) == 1
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(g["id"], g["status"], g["seed"], g.get("points")) for g in got] == [
        ("ok", "ok", None, 1), ("cut", "failed", None, 1), ("box", "ok", 3, 10)]
    assert got[1]["findings"][0]["kind"] == "untracked"
    summary = capsys.readouterr().out
    assert "3 rows checked" in summary and ": 2 ok, 1 failed; results in" in summary
    assert "\n  failed   cut: untracked: the cut detach(tanh(x)) (column 3) changes the gradient" in summary


def test_a_row_that_cannot_be_checked_exits_2_after_the_others_ran(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "expr": "sinn(x)", "at": {"x": 1}}\n{"id": "b", "expr": "x**2", "at": {"x": 3}}\n')
    assert main(["batch", str(rows), "--workers", "1"]) == 2
    captured = capsys.readouterr()
    assert [json.loads(x)["status"] for x in captured.out.splitlines()] == ["error", "ok"]
    assert "\n  error    a: UnknownFunctionError: unknown function 'sinn'\n" in captured.err


@pytest.mark.parametrize("content,message", [
    ('{"expr": "x"}\n', "{p}:1: every row needs an id (a string or an integer)\n"
                        'e.g. {{"id": "row-1", "expr": "sin(x)", ...}}'),
    ('{"id": 1, "expr": "x"}\n{"id": 1, "expr": "y"}\n',
     "{p}:2: the id 1 is used twice (first at {p}:1)\nids must be unique: the output and --resume find rows by id"),
    ('{"id": 1, "expr": "x"\n', "{p}:1: not valid JSON (Expecting ',' delimiter at column 22)\n"
                                'each line is one JSON object, e.g. {{"id": "a", "expr": "sin(x)", "at": {{"x": 0.5}}}}'),
    ('{"id": 1, "expr": "x", "order": 3}\n', "{p}:1: order must be 1 or 2, not 3"),
    ('{"id": 1, "expr": "x", "domain": {"x": [0]}}\n', "{p}:1: domain: the range of 'x' must be [low, high], not [0]"),
    ('{"id": 1, "expr": "x", "at": {"x": "a"}}\n',
     "{p}:1: at: the value of 'x' must be a number or a list of numbers, not 'a'"),
    ('[1, 2]\n', "{p}:1: a line must be a JSON object, not list"),
])
def test_bad_input_files_exit_2_before_anything_runs(tmp_path, capsys, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    assert main(["batch", str(path)]) == 2
    assert capsys.readouterr().err == "gradcheck-sym: error: " + message.format(p=path) + "\n"


def test_batch_option_errors(tmp_path, capsys, monkeypatch):
    csv = tmp_path / "r.csv"
    csv.write_text("name,expr\na,x\n")
    assert main(["batch", str(csv)]) == 2
    assert capsys.readouterr().err == (f"gradcheck-sym: error: {csv}: the CSV header has no id column\n"
                                       "the first line names the columns, e.g. id,expr,domain,samples\n")
    assert main(["batch", str(csv), "--resume"]) == 2
    assert capsys.readouterr().err == ("gradcheck-sym: error: --resume needs --output FILE: the rows already in "
                                       "FILE are skipped\n")
    assert main(["batch", "nofile.jsonl"]) == 2
    assert capsys.readouterr().err == "gradcheck-sym: error: 'nofile.jsonl': no such file\n"
    assert main(["batch", str(csv), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "gradcheck-sym: error: --workers must be at least 1, not 0\n"
    monkeypatch.setattr("gradcheck_sym.scale.execute.CONNECT_TIMEOUT", 0.5)
    assert main(["batch", str(csv), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith("gradcheck-sym: error: cannot reach the Dask scheduler at "
                                              "'tcp://127.0.0.1:1': ")


# -- resume -------------------------------------------------------------------------------------------------------


def test_resume_after_a_cut_gives_the_bytes_of_an_uninterrupted_run(rows_file, tmp_path, capsys, serial_output):
    out = tmp_path / "out.jsonl"
    cut = serial_output.splitlines(keepends=True)
    out.write_text("".join(cut[:3]) + cut[3][:25])  # three rows, then half a line
    assert main(["batch", str(rows_file), "-o", str(out), "--resume", "--workers", "2"]) == 0
    assert out.read_text() == serial_output
    assert f"({3} already in {out}, skipped)" in capsys.readouterr().out
    out.write_text("not json\n")
    assert main(["batch", str(rows_file), "-o", str(out), "--resume"]) == 2
    assert capsys.readouterr().err == (f"gradcheck-sym: error: {out}:1 is not a result line of gradcheck-sym batch, "
                                       "so --resume cannot continue this file\ngive --output a new file, or remove "
                                       "that line\n")


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    # rows of 200,000 points each (~0.15 s a row): with 10 points, 15 rows ran in 0.5 s in the worker process and
    # the whole batch could end before the Ctrl-C landed (a race seen in CI)
    rows = [dict(r, samples=200_000) for r in ROWS]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    serial_output = lines(gs.check_many(rows, executor=SerialExecutor()))
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(rows_file), "-o", str(out), "--workers", "1"]

    def press_ctrl_c_after_two_rows():
        deadline_ = time.monotonic() + 60
        while time.monotonic() < deadline_ and (not out.exists() or out.read_text().count("\n") < 2):
            time.sleep(0.02)
        # a real SIGINT, as Ctrl-C sends: it also interrupts a wait in C (interrupt_main only sets a flag, seen
        # when the main thread next runs Python: in CI the whole batch ended first)
        os.kill(os.getpid(), signal.SIGINT)

    running = [True]

    def on_sigint(signum: int, frame: object) -> None:  # (one that came after the batch ended is dropped: no
        if running[0]:                                   # KeyboardInterrupt for pytest itself)
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    helper = threading.Thread(target=press_ctrl_c_after_two_rows)
    helper.start()
    try:
        code = main(argv)
    finally:
        running[0] = False
        helper.join()
        signal.signal(signal.SIGINT, previous)
    written = out.read_text().count("\n")
    assert code == 130
    assert capsys.readouterr().err == (f"gradcheck-sym: interrupted: {written} of {len(ROWS)} written to {out}; run "
                                       "the same command with --resume to finish\n")
    assert 2 <= written < len(ROWS)
    assert main(argv + ["--resume"]) == 0
    assert out.read_text() == serial_output


# -- our own bugs: counted, exit 3, never a traceback -------------------------------------------------------------


def test_an_internal_error_in_a_row_is_reported_not_hidden(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("gradcheck_sym.api.check", boom)
    (r,) = gs.check_many([{"id": "x", "expr": "sin(x)", "at": {"x": 1}}], executor=SerialExecutor())
    assert (r.status, r.error_type, r.error) == ("internal-error", "RuntimeError",
                                                 "internal error, please report: RuntimeError: boom")


def test_an_internal_error_of_the_command_exits_3_in_one_line(monkeypatch, rows_file, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("gradcheck_sym.scale.batch.batch_file", boom)
    assert main(["batch", str(rows_file)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("gradcheck-sym: internal error, please report: RuntimeError: boom (at test_scale.py:")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_worker_that_allocates_too_much_fails_its_task_not_the_machine():
    from gradcheck_sym.scale.pool import memory_share

    assert memory_share(2) >= 4 << 30
    with ProcessPool(1) as pool:
        pool.memory = 4 << 30  # the workers start on first use: a 4 GiB cap
        results = dict(pool.run(scale_tasks.allocate, [{"gib": 8}, {"gib": 0}]))
    assert isinstance(results[0], TaskFailure) and "MemoryError" in results[0].message
    assert results[1] == 0
