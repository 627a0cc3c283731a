"""The numerics policy, in one place.

* **dtype**: float64 by default; float32, float16 and bfloat16 supported.  The
  inputs are rounded to the dtype first, and the reference is computed at the
  rounded point, so input rounding is never mistaken for an error.
* **reference**: the symbolic program in float64 (for every point), then, for
  the points that need a closer look, in mpmath at `MP_DPS` digits (float64
  checks) — float64 is already "higher precision" for the narrower dtypes.
* **cheap test first**: autograd ``a`` passes against the float64 reference ``r``
  when ``|a - r| <= CHEAP_ULPS * u * |r|`` (``u`` the unit roundoff of the
  dtype).  Everything else — ill-conditioned points, non-finite values, kinks,
  real bugs — goes to the detailed test.
* **rounding noise, measured**: the detailed test re-runs autograd `NOISE_TRIALS`
  times with every node's value and incoming gradient multiplied by ``1 + d``,
  ``d`` uniform in ``[-m, m]``, ``m`` = ``4u`` (smaller factors round back to 1;
  or the op's documented kernel
  error, e.g. softplus's threshold, when larger).  This is Monte Carlo
  arithmetic: the spread of the results measures how strongly rounding at each
  node is amplified on the way to each gradient, including cancellation such as
  ``(1 - cos(x))/x**2`` at small ``x``.  The seed is fixed, so verdicts are
  reproducible.
* **tolerance**: ``tol = NOISE_SAFETY * noise + FLOOR_ULPS * (u * |r| + tiny)``, ``tiny``
  the dtype's smallest normal number, so that underflow is not an error (doubled
  when the reference is float64 in a float64 check because the mpmath budget of work,
  `MP_BUDGET`, or of time, `MP_SECONDS`, was spent: the report says so).  A relative error of 1e-6 at a well-conditioned point
  in float64 is far above it (the noise there is ~1e-16) and is reported.
* **rounding inside kernels**: a fused backward (gelu's ``Phi(x) + x*phi(x)``) can cancel
  internally, where no perturbation reaches; ``MAGNITUDE_ULPS * u * M`` is added, ``M`` the
  magnitude sweep: the reverse sweep with every partial's terms taken in absolute value.
* **Hessian entries** (``order=2``) also get ``HESSIAN_ULPS * u * (|g_i| + |g_j| + |H_ij|)``:
  the perturbed re-runs do not reach the rounding inside the second backward pass.
* **which points**: the inputs' gradients and the Hessian are compared at every point;
  intermediate nodes' adjoints (and the second opinion) at the first `NODE_POINTS` points —
  a wrong node backward shows in the inputs' gradients everywhere anyway, and this keeps
  a check of millions of points within about twice one forward+backward.
* **kinks and ties** (``abs`` at 0, ``max`` ties, ``where`` at its boundary,
  ``floor`` at integers): the derivative is undefined; differences there are
  `nondifferentiable` (info) with torch's convention, never mismatches.
* **ill-conditioned points**: where the output's value in the dtype differs from the exact one
  by more than `CONDITION_RTOL_FACTOR` sqrt(u) relative, rounding changed the number itself; the
  point is `ill-conditioned` (info) and not compared (its gradients are of another number).
* **non-finite values**: a point whose output value is NaN/inf is
  `outside-domain` (info, counted).  Elsewhere, a NaN/inf gradient from either
  side is `nonfinite`: info when both sides agree, an error when they do not —
  unless the dtype is narrower than float64, autograd in float64 gets the
  right finite value, and the failure is only the dtype's range (warning).
"""

from __future__ import annotations

import torch

__all__ = [
    "UNIT_ROUNDOFF", "CHEAP_ULPS", "NOISE_SAFETY", "NOISE_TRIALS", "FLOOR_ULPS", "MP_DPS", "MP_BUDGET", "MP_SECONDS",
    "cheap_pass", "noise_factors", "tolerance",
]

UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}
CHEAP_ULPS = 128.0
NOISE_SAFETY = 8.0
NOISE_TRIALS = 5
FLOOR_ULPS = 4.0
MP_DPS = 50
# Points x program steps evaluated in mpmath per check (about 10 s of work at most), and the time
# that work may take per check; points beyond either get the float64 reference, tolerance doubled.
MP_BUDGET = 2_000_000
MP_SECONDS = 5.0
NOISE_SEED = 20_241_126
# Hessian entries: the perturbed re-runs do not reach the rounding inside the second backward
# pass, so these also get HESSIAN_ULPS ulps of the first-order gradients' scale
# (cancellation in e.g. s*(1-s)*(1-2s) for sigmoid'' near 0 costs ~100 ulps).
HESSIAN_ULPS = 256.0
PERTURB_ULPS = 4.0
# Intermediate nodes' adjoints are compared on the first NODE_POINTS points of a check; the
# inputs' gradients (which every node's backward feeds) and the Hessian on every point.
NODE_POINTS = 10_000
# Rounding inside one kernel (a fused backward such as gelu's) is not reached by the perturbed
# re-runs; it is bounded by MAGNITUDE_ULPS ulps of the magnitude sweep (sum over paths of
# |adjoint| x |terms of the local partial|).
MAGNITUDE_ULPS = 8.0
# A traced function's value must match the traced math to 100 sqrt(u) relative, else the
# trace does not hold at that point (data-dependent control flow).
TRACE_RTOL_FACTOR = 100.0
# An expression's value in the dtype must match the exact value (float64 for narrower dtypes) to
# sqrt(u) relative (plus the dtype's smallest normal number), else rounding changed the number
# itself there (x**2 at x = 82.25 in float16 is off by 1, and sin of it is noise): the point is
# `ill-conditioned` (info) and its gradients are not compared.
CONDITION_RTOL_FACTOR = 1.0


def cheap_pass(a: torch.Tensor, r: torch.Tensor, u: float) -> torch.Tensor:
    """True where autograd `a` and the float64 reference `r` agree to CHEAP_ULPS ulps of |r|.

    Six elementwise kernels, two of them in place: this runs on every compared value of every point.
    NaN fails by itself; an infinite reference gets a bound of 0, which sends it to the detailed test
    (an infinite difference is never <= 0).
    """
    bound = r.abs().mul_(CHEAP_ULPS * u).nan_to_num_(nan=0.0, posinf=0.0)
    return (a - r).abs_() <= bound


def noise_factors(
    node_ids: list[int], n: int, u: float, approx: dict[int, float], dtype: torch.dtype, trials: int
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random factors 1 + d for each node's value and gradient, for `trials` Monte Carlo
    trials side by side (the batch is the n points repeated `trials` times)."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    d = 2 * torch.rand(len(node_ids), 2, trials * n, generator=gen, dtype=torch.float64) - 1
    # PERTURB_ULPS * u, not u: a factor 1 + d with |d| < u mostly rounds back to exactly 1.
    m = torch.tensor([max(PERTURB_ULPS * u, approx.get(k, 0.0)) for k in node_ids], dtype=torch.float64)
    factors = d.mul_(m.view(-1, 1, 1)).add_(1).to(dtype)  # in place, every node at once (10,000 nodes: 40,000 kernels)
    return dict(zip(node_ids, zip(factors[:, 0].unbind(0), factors[:, 1].unbind(0))))


def tolerance(noise: torch.Tensor, r: torch.Tensor, u: float, reference_is_float64: bool, tiny: float) -> torch.Tensor:
    """The tolerance at each point: measured noise with a safety factor plus a few ulps of the value."""
    # The absolute floor admits underflow: a gradient below the dtype's smallest normal
    # number (exp(-180) in float32) cannot be told apart from 0 by autograd.
    tol = NOISE_SAFETY * noise + FLOOR_ULPS * u * r.abs() + FLOOR_ULPS * tiny
    if reference_is_float64:
        tol = tol + NOISE_SAFETY * noise
    return tol
