"""The words of the report: every finding's prose and every explanation, as named templates.

Each constant is a `str.format` template; the judge fills it in (`judge.findings`).
Keeping them here makes them easy to read side by side, to review and to pin in tests.
Fields used below: ``where`` ("at 3 of 100 points"), ``what`` (the compared quantity),
``worst`` (the worst example in words), ``dtype``, numbers already formatted.
"""

from __future__ import annotations

__all__ = [
    "OUTSIDE_DOMAIN", "TRACE_DIVERGED", "ILL_CONDITIONED", "VALUE_DIFFERS", "NONDIFFERENTIABLE", "NONDIFFERENTIABLE_EXAMPLE",
    "SECOND_OPINION", "MISMATCH", "MISMATCH_CUTS", "UNTRACKED", "UNTRACKED_TAIL_ONE", "UNTRACKED_TAIL_MANY",
    "DROPPED_ONE", "DROPPED_MANY", "NONFINITE_AGREE", "NONFINITE_RANGE", "NONFINITE", "WHERE_NAN_HINT",
    "STALE_GRAPH", "RANGE", "RANGE_IN_FLOAT64", "CUT_HARMLESS", "DETACH_DOES", "NO_GRAD_DOES", "TOLERANCE_LINE", "TOLERANCE_WHY",
    "REFERENCE_MP", "REFERENCE_64", "REFERENCE_64_SPENT", "REFERENCE_64_TIME", "SECOND_OPINION_SKIPPED",
    "HIGH_PRECISION_SKIPPED", "WORST", "WORST_ERROR", "WORST_TOL",
]

# ---------------------------------------------------------------- findings
OUTSIDE_DOMAIN = (
    "the output is not a finite real number {where} (NaN: outside the real domain, e.g. sqrt or log of "
    "a negative number; inf: a pole or overflow in {dtype}); these points are not compared"
)
TRACE_DIVERGED = (
    "the traced computation does not reproduce the function's value {where} (its control flow or "
    "its indexing depends on the values, e.g. `if x.sum() > 0`); these points are not compared: "
    "check them one by one, or give the math with expected="
)
ILL_CONDITIONED = (
    "torch's value of the output in {dtype} is not the exact value {where} (it differs by more than 100 sqrt(u) "
    "relative): the expression is too ill-conditioned there for {dtype}, rounding changes the number itself; "
    "these points are not compared"
)
VALUE_DIFFERS = (
    "the function's value differs from the expected expression {where}; worst at point {index} "
    "({point}): function {autograd}, expected {symbolic}"
)
NONDIFFERENTIABLE = "{text} is at a kink, tie or jump {where}, where the derivative is undefined: {convention}{example}"
NONDIFFERENTIABLE_EXAMPLE = "; e.g. {label}: torch {autograd}, sympy {symbolic}"
SECOND_OPINION = (
    "the reverse sweep and sympy.diff of the whole expression disagree on d out/d {name} {where} "
    "(sympy.diff {whole}, sweep {sweep}); please report this"
)
MISMATCH = "autograd's {what} differs from the exact derivative {where}; {worst}.{cuts}"
MISMATCH_CUTS = (
    " The gradient is cut at {cuts}, but treating the cuts as constants does not explain it either."
)
UNTRACKED = (
    "the cut {label} ({where_cut}){source} changes the gradient {where}: {does}, dropping {dropped} that flows "
    "into it{tail}. Remove the cut, or keep it only where the value is meant to be a constant"
)
UNTRACKED_TAIL_ONE = (
    ". {label}: {worst}; with the cuts treated as constants the exact value is {cut_value}, which autograd matches"
)
UNTRACKED_TAIL_MANY = "; {worst}; with the cuts treated as constants the exact derivatives match autograd"
DROPPED_ONE = "the gradient d out/d ({label}) = {dropped}"
DROPPED_MANY = "gradients of up to {dropped} (over its {count} elements)"
NONFINITE_AGREE = "{what} is not finite {where}, and autograd agrees ({autograd})"
NONFINITE_RANGE = (
    "{what} is not finite in autograd {where} although the exact derivative is finite: "
    "{why}; not a bug in the derivative, a limit of the dtype; {worst}"
)
NONFINITE = "{what}: autograd gives {autograd} where the exact derivative is {symbolic} {where}{hint}; {worst}"
WHERE_NAN_HINT = (
    " (the unselected branch of where() still back-propagates, and 0 * inf is NaN: "
    "make the unselected branch safe, e.g. where(x > 0, sqrt(where(x > 0, x, 1)), 0))"
)
STALE_GRAPH = (
    "autograd's {what} differs from the exact derivative {where}, as the stale graph (see the "
    "stale-graph finding) makes it: backward differentiates the old value; {worst}"
)
RANGE = (
    "autograd's {what} is off {where} because {why}: a limit of "
    "{dtype}, not a wrong derivative{in_float64}; {worst}"
)
RANGE_IN_FLOAT64 = " (float64 gets it right)"
CUT_HARMLESS = "the cut {label} ({where_cut}){source}: {does}; it does not change any checked gradient here"
WORST = "worst at point {index} ({point}){label}: autograd {autograd}, exact {symbolic}"
WORST_ERROR = ", error {abs_err:.3g}"
WORST_TOL = ", tolerance {tol:.3g}"

# ---------------------------------------------------------------- what cuts do
DETACH_DOES = "detach(...) makes autograd treat its value as a constant"
NO_GRAD_DOES = "no_grad(...) evaluates its argument under torch.no_grad(), so autograd never sees it"

# ---------------------------------------------------------------- the tolerance, in words
TOLERANCE_LINE = (
    "{dtype}: cheap test |a - r| <= {cheap:g} ulp, then measured rounding noise x {safety:g} (+{floor:g} ulp) "
    "against the exact derivative{reference}"
)
TOLERANCE_WHY = "tol = {safety:g} x rounding noise {noise:.2g} measured by {trials} perturbed re-runs + {floor:g} ulp; {reference}"
REFERENCE_MP = "reference in {dps}-digit arithmetic"
REFERENCE_64 = "reference in float64"
REFERENCE_64_SPENT = "reference in float64 (high-precision budget spent: tolerance doubled)"
REFERENCE_64_TIME = "reference in float64 ({why}: tolerance doubled)"

# ---------------------------------------------------------------- what was skipped, and why
SECOND_OPINION_SKIPPED = "no second opinion ({why})"
HIGH_PRECISION_SKIPPED = (
    "the {dps}-digit reference was skipped at {count} point(s) ({why}); the float64 reference was used there, "
    "with a doubled tolerance"
)
