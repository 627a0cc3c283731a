"""The command line: transcripts pinned in tests/golden, exit codes, no tracebacks, fast --help."""

import os
import subprocess
import sys

import pytest

from gradcheck_sym.cli import main

from .conftest import GOLDEN

CASES = {
    "check_ok": ["check", "sin(x)*exp(y) + log(1 + x**2)/y", "--at", "x=0.7,y=1.3"],
    "check_where": ["check", "where(x > 0, sqrt(x), 0)", "--domain", "x=-1:1", "--samples", "200", "--seed", "0"],
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
                                        "e.g. --domain x=-1:1\n"),
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
