"""pytest plugin (entry point ``pytest11``): the `gradcheck_sym` fixture.

    def test_my_softplus(gradcheck_sym):
        gradcheck_sym(MySoftplus.apply, torch.randn(5, dtype=torch.float64))

The fixture calls `gradcheck_sym.assert_gradients`; a failure prints the text
report.  Nothing heavy is imported until the fixture is used, so installing
the package does not slow down other test suites.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture
def gradcheck_sym() -> Callable[..., Any]:
    """``gradcheck_sym(fn, *inputs, **options)``: check_function, failing the test with the report on errors."""
    from .api import assert_gradients

    def run(fn: Callable[..., Any], *inputs: Any, **options: Any) -> Any:
        __tracebackhide__ = True
        try:
            return assert_gradients(fn, *inputs, **options)
        except AssertionError as exc:
            pytest.fail(str(exc), pytrace=False)

    return run
