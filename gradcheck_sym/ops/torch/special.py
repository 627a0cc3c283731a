"""Special functions: gamma and polygamma, Bessel I, the normal distribution, erfcx, sinc, xlogy, logit.

Where sympy has no function, or its form would overflow or cancel in float64 (``log`` of
the normal CDF at -40, ``exp(x**2) erfc(x)`` at 30), a small sympy class stands for
torch's function: its derivative is written in terms of such classes again (so second
derivatives stay closed), its numbers come from torch's forward kernel (float64) and
from mpmath at high precision.

The gamma family's kernels are not correctly rounded, and the rounding allowance must
know how torch evaluates them (``aten/src/ATen/native/Math.h``): digamma sums
``1/(x+k)`` up to 10 and reflects below 0 through ``tan(pi*frac(x))``, trigamma
reflects below 1/2 through ``sin(pi*x)**2`` and truncates its asymptotic series (a
relative error of ~5e-10), higher polygammas sum a Hurwitz zeta series.  `psi_form`
writes that evaluation as a sympy expression of the same value, whose running error
bound is the allowance; measured against mpmath it bounds torch's error in float64 and
float32, also next to digamma's roots and the poles.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import mpmath
import sympy
import torch

from ...reference.evaluate import register_function
from ..ew import EwFn
from .elementwise import apply, num, sym, x, y
from .registry import Args, Ctx, Refused, rule

__all__ = ["psi_form", "i0", "i1", "i0e", "i1e", "erfcx", "log_ndtr", "ndtri"]

_PI = sympy.pi
_SQRT_2PI = sympy.sqrt(2 * _PI)


class _Special(sympy.Function):
    """A function of one argument that torch has and sympy lacks; subclasses give `fdiff` and `_mp`."""

    nargs = 1

    @staticmethod
    def _mp(v: Any) -> Any:
        raise NotImplementedError

    def _eval_is_real(self) -> bool | None:
        return self.args[0].is_real  # real (or NaN, as torch's) on the real line

    def _eval_evalf(self, prec: int) -> sympy.Expr | None:
        arg = self.args[0].evalf(mpmath.libmp.prec_to_dps(prec) + 5)
        if not arg.is_Number:
            return None
        with mpmath.workprec(prec + 20):
            value = self._mp(mpmath.mpf(arg._to_mpmath(prec + 20)))
        return sympy.Float._new(mpmath.mpf(value)._mpf_, prec)


def _signum() -> Any:
    return sym().sign  # derivative 0 (torch's sgn), not sympy's DiracDelta


class i0(_Special):  # noqa: N801 - torch's names
    """Modified Bessel function I0."""

    _mp = staticmethod(lambda v: mpmath.besseli(0, v))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return i1(self.args[0])


class i1(_Special):  # noqa: N801
    """Modified Bessel function I1; i1'(0) = 1/2 (torch's i1_backward switches to it for |x| <= eps)."""

    _mp = staticmethod(lambda v: mpmath.besseli(1, v))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        t = self.args[0]
        return sympy.Piecewise((sympy.S.Half, sympy.Eq(t, 0)), (i0(t) - i1(t) / t, True))


class i0e(_Special):  # noqa: N801
    """exp(-|x|) I0(x), without overflow."""

    _mp = staticmethod(lambda v: mpmath.exp(-abs(v)) * mpmath.besseli(0, v))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        t = self.args[0]
        return i1e(t) - _signum()(t) * i0e(t)


class i1e(_Special):  # noqa: N801
    """exp(-|x|) I1(x), without overflow."""

    _mp = staticmethod(lambda v: mpmath.exp(-abs(v)) * mpmath.besseli(1, v))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        t = self.args[0]
        return sympy.Piecewise((sympy.S.Half, sympy.Eq(t, 0)), (i0e(t) - i1e(t) * (_signum()(t) + 1 / t), True))


class erfcx(_Special):  # noqa: N801
    """exp(x**2) erfc(x), the scaled complementary error function."""

    _mp = staticmethod(lambda v: mpmath.exp(v * v) * mpmath.erfc(v))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        t = self.args[0]
        return 2 * t * erfcx(t) - 2 / sympy.sqrt(_PI)


class log_ndtr(_Special):  # noqa: N801
    """log of the standard normal CDF, finite far into the lower tail."""

    _mp = staticmethod(lambda v: mpmath.log(mpmath.ncdf(v)))

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        t = self.args[0]
        return sympy.exp(-t * t / 2 - log_ndtr(t)) / _SQRT_2PI  # the normal pdf over the CDF


def _mp_ndtri(p: Any) -> Any:
    if p <= 0 or p >= 1:
        return -mpmath.inf if p == 0 else mpmath.inf if p == 1 else mpmath.nan
    digits = int(-mpmath.log10(min(p, 1 - p))) + mpmath.mp.dps + 10
    with mpmath.workdps(digits):  # 2p - 1 needs the digits p carries near 0
        return mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1)


class ndtri(_Special):  # noqa: N801
    """The inverse of the standard normal CDF."""

    _mp = staticmethod(_mp_ndtri)

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return _SQRT_2PI * sympy.exp(ndtri(self.args[0]) ** 2 / 2)


def _register() -> None:
    sp = torch.special
    for cls, fn in [(i0, torch.i0), (i1, sp.i1), (i0e, sp.i0e), (i1e, sp.i1e), (erfcx, sp.erfcx),
                    (log_ndtr, sp.log_ndtr), (ndtri, sp.ndtri)]:
        register_function(cls, fn, cls._mp)
    register_function(sympy.erfinv, torch.erfinv, mpmath.erfinv)
    # sympy writes |exp(z)| as exp(re(z)) when it cannot tell z is real (erfinv(x)**2): on the real tensors
    # every value here lives on, re is the identity and im is 0
    register_function(sympy.re, lambda t: t, mpmath.re)
    register_function(sympy.im, torch.zeros_like, mpmath.im)


_register()


def _unary(names: tuple[str, ...], expr: sympy.Expr, torch_impl: Callable[..., Any], **kw: Any) -> EwFn:
    fn = EwFn(names[0], expr, 1, torch_impl=torch_impl, **kw)
    rule(*names, sig=lambda input, *, out=None: 0)(lambda c, a: apply(c, fn, a.input))
    return fn


_unary(("i0", "special_i0"), i0(x), torch.i0)
_unary(("special_i1",), i1(x), torch.special.i1)
_unary(("special_i0e",), i0e(x), torch.special.i0e)
_unary(("special_i1e",), i1e(x), torch.special.i1e)
_unary(("special_erfcx",), erfcx(x), torch.special.erfcx)
_unary(("special_log_ndtr",), log_ndtr(x), torch.special.log_ndtr)
_unary(("special_ndtri",), ndtri(x), torch.special.ndtri)
_unary(("special_ndtr",), sympy.erfc(-x / sympy.sqrt(2)) / 2, torch.special.ndtr)  # erfc: exact in the lower tail
_unary(("erfinv", "special_erfinv"), sympy.erfinv(x), torch.erfinv)
_unary(("special_entr",), sympy.Piecewise((-x * sympy.log(x), x > 0), (0, sympy.Eq(x, 0)), (-sympy.oo, True)),
       torch.special.entr, partials=[-(1 + sympy.log(x))])
# sinc_backward: (pi x cos(pi x) - sin(pi x)) / (pi x**2), 0 at x = 0 (the exact value there)
_unary(("sinc", "special_sinc"), sympy.Piecewise((1, sympy.Eq(x, 0)), (sympy.sin(_PI * x) / (_PI * x), True)),
       torch.sinc, partials=[sympy.Piecewise(
           (0, sympy.Eq(x, 0)), ((_PI * x * sympy.cos(_PI * x) - sympy.sin(_PI * x)) / (_PI * x * x), True))])


# ---------------------------------------------------------------- gamma and polygamma
def psi_form(n: int, t: sympy.Expr) -> sympy.Expr:
    """polygamma(n, t) written the way torch's kernel evaluates it (same value), for its rounding bound."""
    if n == 0:  # calc_digamma: recurrence up to 10, reflection below 0 through frac(t)
        def shifted(s: sympy.Expr) -> sympy.Expr:
            recurrence = sympy.Add(sympy.polygamma(0, s + 10), *[-1 / (s + k) for k in range(10)], evaluate=False)
            return sympy.Piecewise((recurrence, s < 10), (sympy.polygamma(0, s), True))

        frac = t - sym().sign(t) * sym().floor(sympy.Abs(t))
        reflected = shifted(1 - t) - _PI / sympy.tan(_PI * frac)
        return sympy.Piecewise((reflected, t < 0), (shifted(t), True))
    if n == 1:  # calc_trigamma: reflection below 1/2 through sin(pi t)**2, six recurrence terms
        def series(s: sympy.Expr) -> sympy.Expr:
            return sympy.Add(sympy.polygamma(1, s + 6), *[1 / (s + k) ** 2 for k in range(6)], evaluate=False)

        return sympy.Piecewise((_PI**2 / sympy.sin(_PI * t) ** 2 - series(1 - t), t < sympy.S.Half),
                               (series(t), True))
    # n >= 2: (-1)**(n+1) n! zeta(n+1, t), cephes' zeta sums (t+k)**-(n+1) until t + k > 9
    coef = (-1) ** (n + 1) * sympy.factorial(n)

    def hurwitz(terms: int) -> sympy.Expr:
        return sympy.Add(sympy.polygamma(n, t + terms), *[coef / (t + k) ** (n + 1) for k in range(terms)],
                         evaluate=False)

    return sympy.Piecewise((hurwitz(20), t < 0), (hurwitz(10), True))


# trigamma's asymptotic series is cut early: ~5e-10 relative error in float64 (measured against mpmath).
_TRIGAMMA_REL = 1e-9


@functools.lru_cache(maxsize=32)
def polygamma_fn(n: int) -> EwFn:
    """polygamma(n, .) with torch's kernel as its value and the forms of its value and derivative."""
    impl: Callable[..., Any] = torch.digamma if n == 0 else functools.partial(torch.polygamma, n)
    return EwFn(f"polygamma({n})", sympy.polygamma(n, x), 1, torch_impl=impl, err_form=psi_form(n, x),
                rel_err=_TRIGAMMA_REL if n == 1 else 0.0, grad_forms=[psi_form(n + 1, x)],
                grad_rel_err=_TRIGAMMA_REL if n == 0 else 0.0,
                convention="poles at 0, -1, -2, ...")


rule("digamma", "special_digamma", "special_psi", sig=lambda input, *, out=None: 0)(
    lambda c, a: apply(c, polygamma_fn(0), a.input))


@rule("polygamma", "special_polygamma", sig=lambda n, input, *, out=None: 0)
def _polygamma(c: Ctx, a: Args) -> Any:
    n, t = a.n, a.input
    if isinstance(n, torch.Tensor):  # the method: x.polygamma(n)
        n, t = t, n
    return apply(c, polygamma_fn(int(n)), t)


# below 0 libm reflects: log(pi/|sin(pi x)|) - lgamma(1 - x), which cancels next to lgamma's negative roots
_LGAMMA_FORM = sympy.Piecewise(
    (sympy.log(_PI / sympy.Abs(sympy.sin(_PI * x))) - sym().lgamma(1 - x), x < 0), (sym().lgamma(x), True))
_LGAMMA = EwFn("lgamma", sym().lgamma(x), 1, torch_impl=torch.lgamma, err_form=_LGAMMA_FORM,
               grad_forms=[psi_form(0, x)],
               convention="log|gamma(x)|, real also for negative x; poles at 0, -1, -2, ...")
rule("lgamma", "special_gammaln", sig=lambda input, *, out=None: 0)(lambda c, a: apply(c, _LGAMMA, a.input))


@functools.lru_cache(maxsize=32)
def _mvlgamma(p: int) -> EwFn:
    """log of the multivariate gamma function: sum of lgamma(x - j/2) + p(p-1)/4 log(pi) (mvlgamma_backward:
    the sum of digamma(x - j/2))."""
    shifts = [x - sympy.Rational(j, 2) for j in range(p)]
    expr = sympy.Add(*[sym().lgamma(s) for s in shifts]) + sympy.Rational(p * (p - 1), 4) * sympy.log(_PI)
    return EwFn(f"mvlgamma({p})", expr, 1, torch_impl=lambda t: torch.mvlgamma(t, p),
                partials=[sympy.Add(*[sympy.polygamma(0, s) for s in shifts])],
                grad_forms=[sympy.Add(*[psi_form(0, s) for s in shifts], evaluate=False)],
                grad_rel_err=_TRIGAMMA_REL)


rule("mvlgamma", "special_multigammaln", sig=lambda input, p, *, out=None: 0)(
    lambda c, a: apply(c, _mvlgamma(int(a.p)), a.input))


# ---------------------------------------------------------------- xlogy, xlog1py
def _xlog(name: str, log: Callable[[sympy.Expr], sympy.Expr], edge: int, torch_impl: Callable[..., Any]) -> EwFn:
    """x * log(y), 0 where x == 0; derivatives.yaml masks the partial in x to 0 where x == 0 and
    y <= edge (outside log's domain); y's partial is x / (y - edge) (NaN at x == 0, y == edge, as torch's)."""
    return EwFn(name, sympy.Piecewise((0, sympy.Eq(x, 0)), (x * log(y), True)), 2, torch_impl=torch_impl,
                partials=[sympy.Piecewise((0, sympy.And(sympy.Eq(x, 0), y <= edge)), (log(y), True)),
                          x / (y - edge)],
                convention=f"torch defines it as 0 where x == 0; the partial in x is 0 there when y <= {edge}")


_XLOGY = _xlog("xlogy", sympy.log, 0, torch.xlogy)
_XLOG1PY = _xlog("xlog1py", lambda t: sym().log1p(t), -1, torch.special.xlog1py)
rule("xlogy", "special_xlogy", sig=lambda input, other, *, out=None: 0)(
    lambda c, a: apply(c, _XLOGY, a.input, a.other))
rule("special_xlog1py", sig=lambda input, other, *, out=None: 0)(
    lambda c, a: apply(c, _XLOG1PY, a.input, a.other))


# ---------------------------------------------------------------- logit
@rule("logit", "special_logit", sig=lambda input, eps=None, *, out=None: 0)
def _logit(c: Ctx, a: Args) -> Any:
    if isinstance(a.eps, torch.Tensor):
        raise Refused("argument eps of logit as a tensor is not modelled")
    return apply(c, _logit_fn(None if a.eps is None else float(a.eps)), a.input)


@functools.lru_cache(maxsize=64)
def _logit_fn(eps: float | None) -> EwFn:
    """log(z/(1 - z)); with eps, z is x clamped to [eps, 1 - eps] with the bounds included (logit_backward
    passes the gradient at x == eps); without, the partial is NaN outside [0, 1] (as torch's)."""
    d = 1 / (x * (1 - x))
    if eps is None:
        return EwFn("logit", sympy.log(x / (1 - x)), 1, torch_impl=torch.logit,
                    partials=[sympy.Piecewise((d, sympy.And(x >= 0, x <= 1)), (sympy.nan, True))])
    lo, hi = num(eps), num(1.0 - eps)
    clamped = sympy.Min(sympy.Max(x, lo), hi)
    return EwFn(f"logit(eps={eps})", sympy.log(clamped / (1 - clamped)), 1,
                torch_impl=lambda t: torch.logit(t, eps),
                partials=[sympy.Piecewise((d, sympy.And(x >= lo, x <= hi)), (0, True))],
                kink=lambda t: (t == eps) | (t == 1.0 - eps),
                convention="torch passes the gradient at x = eps and 1 - eps (bounds included), 0 outside")
