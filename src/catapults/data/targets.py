"""Synthetic target functions f*(x) over coordinates x1..xd, parsed safely from expressions.

An expression such as ``"x1*x2 + 0.5*x3**2"`` is parsed with :mod:`ast` into a small tree of
allowed operations (numbers, variables ``x1..xd`` (1-indexed), ``+ - * / **``, and the functions
``sin cos tanh exp abs relu sqrt``); nothing is ever ``eval``-ed. A :class:`Target` evaluates on
tensors ``X`` of shape ``(n, d)`` and returns ``(n,)``.

For polynomial targets the expected AGOP under ``x ~ N(0, I_d)`` is computed exactly from Gaussian
moments (:meth:`Target.expected_agop`); for other targets it is estimated by Monte Carlo.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from catapults.curvature.agop import agop
from catapults.errors import TargetError

NAMED_TARGETS: dict[str, str] = {
    "product2": "x1*x2",
    "product3": "x1*x2*x3",
    "product4": "x1*x2*x3*x4",
    "linear1": "x1",
    "quadratic": "x1**2 - 1",
}

_FUNCS = {
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "abs": torch.abs,
    "relu": torch.relu,
    "sqrt": torch.sqrt,
}
_VAR = re.compile(r"^x([1-9][0-9]*)$")
_MAX_LENGTH = 10_000  # characters in an expression
_TOO_DEEP = "the expression is too deeply nested or too long"
_N_PROBE = 512  # standard-normal points on which a parsed target must be finite


@dataclass(frozen=True)
class Target:
    """A parsed scalar target function of ``x ∈ R^d``.

    Call it on ``X`` of shape ``(n, d)`` (or ``(n, ...)``, flattened) to get ``(n,)``.
    """

    expression: str
    d: int
    _tree: ast.Expression

    def __call__(self, X: Tensor) -> Tensor:
        X = X.reshape(X.shape[0], -1)
        if X.shape[1] != self.d:
            raise ValueError(f"target {self.expression!r} expects d={self.d}, got {X.shape[1]}")
        out = _eval(self._tree.body, X)
        if not isinstance(out, Tensor) or out.ndim == 0:  # a constant, e.g. "exp(1)"
            out = torch.full((X.shape[0],), float(out), dtype=X.dtype, device=X.device)
        return out

    @property
    def variables(self) -> set[int]:
        """0-based indices of the coordinates the target depends on."""
        return {int(m.group(1)) - 1 for n in ast.walk(self._tree)
                if isinstance(n, ast.Name) and (m := _VAR.match(n.id))}

    def polynomial(self) -> dict[tuple[int, ...], Fraction] | None:
        """The target as {exponent tuple (length d): coefficient}, or None if not polynomial."""
        try:
            return _poly(self._tree.body, self.d)
        except _NotPolynomial:
            return None

    def expected_agop(
        self, *, n_mc: int = 200_000, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """E_x[∇f*(x) ∇f*(x)ᵀ] for x ~ N(0, I_d), shape (d, d).

        Exact (Gaussian moments of the gradient polynomials) when the target is a polynomial with
        rational coefficients; otherwise a Monte-Carlo estimate from ``n_mc`` samples.
        """
        poly = self.polynomial()
        exact = _poly_agop(poly, self.d) if poly is not None else None
        if exact is not None:
            return exact.to(dtype)
        _check_agop_memory(self.d, n_mc)
        gen = torch.Generator().manual_seed(seed)
        X = torch.randn(n_mc, self.d, generator=gen, dtype=torch.float64)
        return agop(self, X).to(dtype)


MAX_AGOP_BYTES = 2 * 2**30
"""Memory the Monte-Carlo expected AGOP may use (its samples, gradients and the d x d matrix)."""


def _check_agop_memory(d: int, n_mc: int) -> None:
    need = 8 * (2 * d * d + 3 * min(n_mc, 4096) * d + n_mc * d)
    if need > MAX_AGOP_BYTES:
        raise TargetError(f"the expected AGOP of a target over d = {d} would need "
                          f"{need / 2**30:,.1f} GiB (at most {MAX_AGOP_BYTES / 2**30:.0f} GiB); "
                          "use a smaller data.d or a polynomial target (exact)")


def parse_target(expression: str, d: int) -> Target:
    """Parse a target name or expression over x1..xd; raise :class:`TargetError` if invalid.

    Invalid also means not finite: a target must give finite values on a fixed probe of
    standard-normal points (so ``x1/0``, ``10**10**10`` or ``sqrt(x1)`` are refused).
    """
    text = NAMED_TARGETS.get(expression.strip(), expression.strip())
    if len(expression) > 80:  # messages quote the expression: keep them short
        expression = expression[:60] + "..."
    if not text:
        raise TargetError("empty target expression")
    if len(text) > _MAX_LENGTH:
        raise TargetError(f"target expression of {len(text)} characters is too long "
                          f"(at most {_MAX_LENGTH})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise TargetError(f"cannot parse {expression!r} as an arithmetic expression") from None
    except (RecursionError, MemoryError):
        raise TargetError(f"{expression!r}: {_TOO_DEEP}") from None
    target = Target(expression=text, d=d, _tree=tree)
    try:
        _validate(tree.body, d, expression)
        _check_finite(target, expression)
    except RecursionError:
        raise TargetError(f"{expression!r}: {_TOO_DEEP}") from None
    return target


def _check_finite(target: Target, src: str) -> None:
    """Raise TargetError if ``target`` is not finite on a fixed standard-normal probe."""
    gen = torch.Generator().manual_seed(0)
    width = max(target.variables, default=0) + 1  # only the used coordinates matter
    X = torch.randn(_N_PROBE, width, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = _eval(target._tree.body, X)
    if not bool(torch.isfinite(torch.as_tensor(y)).all()):
        raise TargetError(f"{src!r} gives non-finite values (inf/nan) on x ~ N(0, I): a value "
                          f"overflows (e.g. an exponent too large), divides by zero or is "
                          f"undefined (e.g. sqrt of a negative number)")


def _validate(node: ast.AST, d: int, src: str) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise TargetError(f"{src!r}: only numbers are allowed as constants")
        try:
            finite = math.isfinite(float(node.value))
        except OverflowError:  # an int literal beyond float range
            finite = False
        if not finite:
            raise TargetError(f"{src!r}: a number is too large (beyond the float64 range)")
    elif isinstance(node, ast.Name):
        m = _VAR.match(node.id)
        if not m:
            raise TargetError(f"{src!r}: unknown name {node.id!r} (use x1..x{d})")
        if int(m.group(1)) > d:
            raise TargetError(f"{src!r}: {node.id} does not exist for d={d}")
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            raise TargetError(f"{src!r}: operator {type(node.op).__name__} is not allowed")
        _validate(node.left, d, src)
        _validate(node.right, d, src)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise TargetError(f"{src!r}: operator {type(node.op).__name__} is not allowed")
        _validate(node.operand, d, src)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            raise TargetError(f"{src!r}: only the functions {', '.join(_FUNCS)} are allowed")
        if len(node.args) != 1 or node.keywords:
            raise TargetError(f"{src!r}: {node.func.id} takes exactly one argument")
        _validate(node.args[0], d, src)
    else:
        raise TargetError(f"{src!r}: {type(node).__name__} is not allowed in a target")


def _eval(node: ast.AST, X: Tensor):
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return X[:, int(node.id[1:]) - 1]
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, X)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Call):
        v = _eval(node.args[0], X)
        if not isinstance(v, Tensor):
            v = torch.tensor(v, dtype=X.dtype, device=X.device)
        return _FUNCS[node.func.id](v)
    left, right = _eval(node.left, X), _eval(node.right, X)
    if not isinstance(left, Tensor) and not isinstance(right, Tensor):
        # constants: IEEE float64 (inf/nan) as on tensors, not Python's OverflowError/complex
        left = torch.tensor(left, dtype=torch.float64)
        return float(_binop(node.op, left, torch.tensor(right, dtype=torch.float64)))
    return _binop(node.op, left, right)


def _binop(op: ast.operator, left, right):
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, ast.Div):
        return left / right
    return left**right


# ---- exact polynomial algebra ---------------------------------------------------------------
class _NotPolynomial(Exception):
    pass


Poly = dict[tuple[int, ...], Fraction]
_MAX_DEGREE = 64  # expanded exactly up to this degree ...
_MAX_TERMS = 100_000  # ... and this many term products per multiplication


def _decimal_fraction(value: float) -> Fraction:
    """The fraction a literal means: 0.1 -> 1/10 (the nearest simple fraction, when it is within
    rounding of the float), else the float's exact value (so 1e-13 stays 1e-13, not 0)."""
    exact = Fraction(value)
    simple = exact.limit_denominator(10**12)
    return simple if abs(simple - exact) <= abs(exact) * Fraction(1, 10**15) else exact


def _poly(node: ast.AST, d: int) -> Poly:
    zero = (0,) * d
    if isinstance(node, ast.Constant):
        return {zero: _decimal_fraction(node.value)}
    if isinstance(node, ast.Name):
        e = [0] * d
        e[int(node.id[1:]) - 1] = 1
        return {tuple(e): Fraction(1)}
    if isinstance(node, ast.UnaryOp):
        p = _poly(node.operand, d)
        return {k: -v for k, v in p.items()} if isinstance(node.op, ast.USub) else p
    if isinstance(node, ast.BinOp):
        a = _poly(node.left, d)
        if isinstance(node.op, ast.Pow):
            b = _poly(node.right, d)
            if set(b) != {zero} or b[zero].denominator != 1 or b[zero] < 0 or b[zero] > 16:
                raise _NotPolynomial
            out: Poly = {zero: Fraction(1)}
            for _ in range(int(b[zero])):
                out = _small_mul(out, a)
            return out
        b = _poly(node.right, d)
        if isinstance(node.op, ast.Add):
            return _add(a, b, 1)
        if isinstance(node.op, ast.Sub):
            return _add(a, b, -1)
        if isinstance(node.op, ast.Mult):
            return _small_mul(a, b)
        if isinstance(node.op, ast.Div) and set(b) == {zero} and b[zero] != 0:
            return {k: v / b[zero] for k, v in a.items()}
    raise _NotPolynomial


def _add(a: Poly, b: Poly, sign: int) -> Poly:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, Fraction(0)) + sign * v
    return {k: v for k, v in out.items() if v != 0}


def _small_mul(a: Poly, b: Poly) -> Poly:
    """a * b, or _NotPolynomial (Monte Carlo instead) when the product gets too large to expand."""
    degree = max(map(sum, a), default=0) + max(map(sum, b), default=0)
    if degree > _MAX_DEGREE or len(a) * len(b) > _MAX_TERMS:
        raise _NotPolynomial
    return _mul(a, b)


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ka, va in a.items():
        for kb, vb in b.items():
            k = tuple(x + y for x, y in zip(ka, kb))
            out[k] = out.get(k, Fraction(0)) + va * vb
    return {k: v for k, v in out.items() if v != 0}


def _gauss_moment(k: int) -> int:
    """E[z^k] for z ~ N(0, 1): (k-1)!! for even k, 0 for odd k."""
    return 0 if k % 2 else math.prod(range(k - 1, 0, -2))


def _expect(p: Poly) -> Fraction:
    return sum((v * math.prod(_gauss_moment(e) for e in k) for k, v in p.items()), Fraction(0))


_MAX_HERMITE_TERMS = 2_000_000  # Hermite coefficients of f* expanded exactly ...
_MAX_AGOP_WORK = 50_000_000  # ... and products accumulated into the AGOP


def _hermite_of_power(k: int) -> list[tuple[int, Fraction]]:
    """``x^k = Σ_m c_m He_{k-2m}(x)`` with probabilists' Hermite polynomials:
    ``c_m = k! / (m! (k-2m)! 2^m)``."""
    return [(k - 2 * m, Fraction(math.factorial(k),
                                 math.factorial(m) * math.factorial(k - 2 * m) * 2**m))
            for m in range(k // 2 + 1)]


def _hermite(poly: Poly) -> dict[tuple[int, ...], Fraction] | None:
    """``f = Σ_α f̂_α He_α`` (``He_α = Π_i He_{α_i}(x_i)``), or None past _MAX_HERMITE_TERMS."""
    out: dict[tuple[int, ...], Fraction] = {}
    for k, v in poly.items():
        terms: list[tuple[tuple[int, ...], Fraction]] = [(k, v)]
        for i, e in enumerate(k):
            if e < 2:
                continue  # x and 1 are already Hermite polynomials
            expanded = []
            for idx, c in terms:
                for deg, h in _hermite_of_power(e):
                    kk = list(idx)
                    kk[i] = deg
                    expanded.append((tuple(kk), c * h))
            terms = expanded
        for idx, c in terms:
            out[idx] = out.get(idx, Fraction(0)) + c
        if len(out) > _MAX_HERMITE_TERMS:
            return None
    return {k: v for k, v in out.items() if v != 0}


def _poly_agop(poly: Poly, d: int) -> Tensor | None:
    """``E[∇f ∇fᵀ]`` under ``x ~ N(0, I_d)``, exactly, in the Hermite basis (or None when that
    would take too long: the caller then estimates it by Monte Carlo).

    With ``f = Σ_α f̂_α He_α`` and ``He_n' = n He_{n-1}``, ``∂_a f = Σ_β g_a(β) He_β`` with
    ``g_a(β) = (β_a + 1) f̂_{β+e_a}``, and since ``E[He_β He_γ] = β! δ_βγ``,
    ``G_ab = Σ_β β! g_a(β) g_b(β)``: one small outer product per multi-index β. This costs
    about the number of Hermite terms times the variables each touches, instead of a product of
    the gradient polynomials per pair (a, b) (minutes at d = 60)."""
    coeffs = _hermite(poly)
    if coeffs is None:
        return None
    by_beta: dict[tuple[int, ...], list[tuple[int, Fraction]]] = {}
    for alpha, c in coeffs.items():
        for a, e in enumerate(alpha):
            if e > 0:
                beta = alpha[:a] + (e - 1,) + alpha[a + 1:]
                by_beta.setdefault(beta, []).append((a, c * e))
    if sum(len(v) ** 2 for v in by_beta.values()) > _MAX_AGOP_WORK:
        return None
    G = torch.zeros(d, d, dtype=torch.float64)
    for beta, entries in by_beta.items():
        weight = math.prod(math.factorial(b) for b in beta if b > 1)
        idx = torch.tensor([a for a, _ in entries])
        g = torch.tensor([float(c) for _, c in entries], dtype=torch.float64)
        G[idx[:, None], idx[None, :]] += weight * torch.outer(g, g)
    return G

