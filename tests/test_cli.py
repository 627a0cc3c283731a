"""The command line: transcripts pinned in tests/golden, exit codes, no tracebacks, fast --help."""

import os
import json
import subprocess
import sys

import pytest

from gradcheck_sym.cli import main

from .conftest import GOLDEN

CASES = {
    "check_ok": ["check", "sin(x)*exp(y) + log(1 + x**2)/y", "--at", "x=0.7,y=1.3"],
    "check_where": ["check", "where(x > 0, sqrt(x), 0)", "--domain", "x=-1:1", "--samples", "200", "--seed", "5"],
    "check_detach": ["check", "x*detach(tanh(x))", "--at", "x=0.5"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_transcripts_are_pinned(name, capsys):
    code = main(CASES[name])
    out = capsys.readouterr().out
    golden = GOLDEN / f"{name}.txt"
    expected_code, expected = golden.read_text().split("\n", 1)
    assert f"exit {code}" == expected_code
    assert out == expected


def test_json_output(capsys):
    assert main(["check", "x*detach(tanh(x))", "--at", "x=0.5", "--json"]) == 1
    assert '"version": 1' in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["check", "sinn(x)", "--at", "x=1"], "gradcheck-sym: error: unknown function 'sinn'\n  sinn(x)\n  ^^^^\n"
                                          "did you mean 'sin' or 'sinh'?\n"),
    (["check", "x", "--at", "x=abc"], "gradcheck-sym: error: --at 'x=abc': 'abc' is not a number (for x)\n"),
    (["check", "x", "--domain", "x=1"], "gradcheck-sym: error: --domain 'x=1': write name=low:high, "
                                        "e.g. --domain x=-1:1,y=0:2\n"),
    (["check", "x*y", "--at", "x=1,y=2", "--at", "x=3"], "gradcheck-sym: error: --at 'x=3': every --at must give "
                                                         "the same variables (x, y)\n"),
    (["check", "x", "--at", "x"], "gradcheck-sym: error: --at 'x': write name=value pairs separated by commas, "
                                  "e.g. --at x=0.7,y=1.3\n"),
    (["check", "x", "--domain", "x=1:0"], "gradcheck-sym: error: the domain of 'x' is empty: low 1.0 > high 0.0\n"),
    (["check", "x*y", "--at", "x=1"], "gradcheck-sym: error: no value for 'y': give it in at (e.g. --at y=0.5) or "
                                      "domain (e.g. --domain y=-1:1)\n"),
    (["check", "10**10**10"], "gradcheck-sym: error: the constant power 10**10**10 would have about 1e+10 digits; "
                              "the limit is 10,000\nwrite the number as a float (e.g. 1e300) or raise "
                              "Limits(max_int_digits=...)\n"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == message and "Traceback" not in err


def test_help_imports_neither_torch_nor_sympy():
    code = ("import sys; from gradcheck_sym.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules, 'sympy' in sys.modules, file=sys.stderr)")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
    assert err.strip() == "False False"


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "gradcheck_sym", "check", "x**2", "--at", "x=3"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout
    # The console script installed beside this interpreter (the venv need not be on PATH).
    script = os.path.join(os.path.dirname(sys.executable), "gradcheck-sym")
    out = subprocess.run([script if os.path.exists(script) else "gradcheck-sym", "example"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "OK" in out.stdout


# ---------------------------------------------------------------- issue 12: every input ends in a report or a clear error
def test_an_expression_that_starts_with_a_minus_is_the_expression(capsys):
    assert main(["check", "-x*y", "--at", "x=1,y=2"]) == 0
    assert capsys.readouterr().out.startswith("gradcheck-sym -x*y\n")
    assert main(["check", "--at", "x=1,y=2", "-x*y", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["expression"] == "-x*y"


@pytest.mark.parametrize("argv,message", [
    (["check", "x", "--at", "x=1,x=2"], "gradcheck-sym: error: --at 'x=1,x=2': x is given twice\n"
                                        "give each variable once per --at\n"),
    (["check", "x", "--domain", "x=0:1", "--domain", "x=2:3"],
     "gradcheck-sym: error: --domain 'x=2:3': x already has --domain 'x=0:1'\ngive one --domain per variable\n"),
    (["check", "x", "--domain", "x=0:1", "--samples", "10", "--max-points", "5"],
     "gradcheck-sym: error: 10 points is more than the limit of 5\n"
     "raise it with Limits(max_points=...) in Python or --max-points on the command line\n"),
])
def test_repeated_names_and_limits_are_clear_errors(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("option,value,words", [
    ("--max-nodes", "-5", "argument --max-nodes: must be a positive integer, not -5"),
    ("--max-depth", "0", "argument --max-depth: must be a positive integer, not 0"),
    ("--timeout", "-1", "argument --timeout: must be a positive number of seconds, not -1"),
    ("--timeout", "nan", "argument --timeout: must be a positive number of seconds, not nan"),
])
def test_negative_limits_and_timeouts_are_refused(option, value, words, capsys):
    assert main(["check", "x", "--at", "x=1", option, value]) == 2
    err = capsys.readouterr().err
    assert err == f"gradcheck-sym: error: {words}\nsee `gradcheck-sym check --help`\n"  # no usage block


def test_errors_are_json_under_json(capsys):
    assert main(["check", "sinn(x)", "--at", "x=1", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {"version": 1, "ok": False, "error": {
        "type": "UnknownFunctionError", "exit_code": 2, "message": "unknown function 'sinn'",
        "hint": "did you mean 'sin' or 'sinh'?", "line": 1, "column": 0,
        "text": "unknown function 'sinn'\n  sinn(x)\n  ^^^^\ndid you mean 'sin' or 'sinh'?"}}


@pytest.mark.parametrize("argv,kind", [
    (["function", "no_such_file.py:f", "--input", "x=1", "--json"], "InputError"),
    (["run", "no_such_file.py", "--json"], "InputError"),
    (["check", "x", "--json", "--bogus"], "UsageError"),
    (["ops", "--json", "--bogus"], "UsageError"),
])
def test_every_command_gives_json_errors(argv, kind, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["error"]["type"] == kind and err == ""


def test_an_internal_error_exits_3_without_a_traceback(monkeypatch, capsys):
    import gradcheck_sym.api

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(gradcheck_sym.api, "check", broken)
    monkeypatch.delenv("GRADCHECK_SYM_DEBUG", raising=False)
    assert main(["check", "x", "--at", "x=1"]) == 3
    assert capsys.readouterr().err == (
        "gradcheck-sym: error: internal error, please report: ValueError: boom\n"
        "this is a bug in gradcheck-sym, not in your input: please report it with the command that caused it; "
        "re-run with --debug (or GRADCHECK_SYM_DEBUG=1) for the traceback\n")
    assert main(["check", "x", "--at", "x=1", "--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("boom")' in err
    monkeypatch.setenv("GRADCHECK_SYM_DEBUG", "1")
    assert main(["check", "x", "--at", "x=1", "--json"]) == 3
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["type"], error["exit_code"], error["cause"]) == ("InternalError", 3, "ValueError: boom")
    assert "Traceback" in error["traceback"]


def test_a_time_limit_is_a_clear_error(capsys):
    text = " + ".join(f"sin(x*{i})" for i in range(1, 3000))
    assert main(["check", text, "--at", "x=0.5", "--timeout", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradcheck-sym: error: the check did not finish within its time limit of 0.3 s (stopped while ")
    assert err.endswith("raise the limit with timeout=... (--timeout on the command line), or check fewer points "
                        "or a smaller expression\n")


def test_every_command_takes_timeout_and_debug(capsys):
    assert main(["ops", "--timeout", "5", "--debug"]) == 0
    assert main(["example", "--timeout", "60"]) == 0
    capsys.readouterr()


def test_a_closed_pipe_ends_quietly():
    text = " + ".join(f"sin(x*{i})" for i in range(300))  # a JSON report of ~300 KB, more than a pipe holds
    out = subprocess.run(["bash", "-o", "pipefail", "-c", f"gradcheck-sym check '{text}' --at x=0.5 --json | head -1"],
                         capture_output=True, text=True)
    assert out.stdout == "{\n" and out.stderr == "" and out.returncode == 141


def test_an_unknown_option_points_at_its_commands_help(capsys):
    assert main(["check", "x", "--att", "x=1"]) == 2
    assert capsys.readouterr().err == ("gradcheck-sym: error: unrecognized arguments: --att x=1\n"
                                       "see `gradcheck-sym check --help`\n")


def test_a_domain_of_several_variables_in_one_option(capsys):
    assert main(["check", "x*y", "--domain", "x=-1:1,y=0.5:2", "--samples", "20", "--seed", "0"]) == 0
    assert main(["check", "x*y", "--domain", "x=-1:1,y=a:2", "--samples", "20"]) == 2
    assert "--domain 'y=a:2': low and high must be numbers" in capsys.readouterr().err
