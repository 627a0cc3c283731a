"""Every script in examples/ runs (so it cannot rot)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out


def test_cli_function_command(capsys):
    from gradcheck_sym.cli import main

    path = str(Path(__file__).parent.parent / "examples" / "custom_function.py")
    assert main(["function", f"{path}:BadSoftplus.apply", "--input", "x=[0.3, -1.2, 2.0]"]) == 1
    out = capsys.readouterr().out
    assert "[error] mismatch x" in out and "custom autograd.Function BadSoftplus" in out
    assert main(["function", f"{path}:GoodSoftplus.apply", "--input", "x=[0.3, -1.2, 2.0]", "--dtype", "float32",
                 "--samples", "5", "--seed", "0", "--json"]) == 0
    assert '"ok": true' in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["function", "nofile.py:f", "--input", "x=1"], "gradcheck-sym: error: 'nofile.py': no such file\n"),
    (["function", "examples/custom_function.py:Nope", "--input", "x=1"],
     "gradcheck-sym: error: examples/custom_function.py has no 'Nope'\n"),
    (["function", "examples/custom_function.py:BadSoftplus.apply", "--input", "x=[1, 'a']"],
     "gradcheck-sym: error: --input \"x=[1, 'a']\": \"[1, 'a']\" is not a number or a nested list of numbers\n"),
    (["function", "examples/custom_function.py"], "gradcheck-sym: error: 'examples/custom_function.py': write "
                                                  "FILE.py:NAME, e.g. model.py:f\n"),
])
def test_cli_function_bad_input(argv, message, capsys, monkeypatch):
    from gradcheck_sym.cli import main

    monkeypatch.chdir(Path(__file__).parent.parent)
    assert main(argv) == 2
    assert capsys.readouterr().err == message
