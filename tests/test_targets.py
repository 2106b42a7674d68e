import pytest
import torch

from catapults.targets import TargetError, parse_target


def test_expression_values():
    t = parse_target("x1*x2 + 0.5*x3**2 - sin(x4)/2", 5)
    X = torch.randn(50, 5, dtype=torch.float64)
    expected = X[:, 0] * X[:, 1] + 0.5 * X[:, 2] ** 2 - torch.sin(X[:, 3]) / 2
    torch.testing.assert_close(t(X), expected)
    assert parse_target("product3", 4).expression == "x1*x2*x3"


@pytest.mark.parametrize("expr", [
    "__import__('os').system('true')", "x1.real", "x0", "x11", "y1", "lambda: 1",
    "x1 if x2 else x3",
    "open('f')", "x1 +", "", "[x1]", "x1 // x2",
])
def test_bad_expressions(expr):
    with pytest.raises(TargetError):
        parse_target(expr, 10)


def test_exact_polynomial_agop_matches_monte_carlo():
    t = parse_target("x1*x2 + 0.5*x3**2 + x1**3", 4)
    exact = t.expected_agop()
    # d/dx1 = x2 + 3 x1^2, d/dx2 = x1, d/dx3 = x3: E[(x2+3x1^2)^2] = 1 + 27 = 28, E[.. * x1] = 0
    assert exact[0, 0] == pytest.approx(28.0)
    assert exact[1, 1] == pytest.approx(1.0) and exact[2, 2] == pytest.approx(1.0)
    assert exact[0, 1] == pytest.approx(0.0) and exact[3, 3] == 0
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(400_000, 4, generator=gen, dtype=torch.float64)
    g = torch.stack([X[:, 1] + 3 * X[:, 0] ** 2, X[:, 0], X[:, 2], 0 * X[:, 0]], 1)
    mc = g.T @ g / X.shape[0]
    torch.testing.assert_close(exact, mc, atol=0.3, rtol=0.02)


def test_product_targets_exact():
    G = parse_target("x1*x2", 10).expected_agop()
    expected = torch.zeros(10, 10, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = 1
    torch.testing.assert_close(G, expected)


def test_coefficients_keep_their_value():
    """Decimal literals are exact (0.1 -> 1/10), and tiny ones are not rounded to 0."""
    G = parse_target("1e-13*x1*x2", 3).expected_agop()
    assert G[0, 0].item() == pytest.approx(1e-26, rel=1e-12) and G[2, 2] == 0
    G = parse_target("0.1*x1*x2 + 3.3e-7*x3", 3).expected_agop()
    assert G[0, 0].item() == pytest.approx(0.01, rel=1e-15)
    assert G[2, 2].item() == pytest.approx(3.3e-7 ** 2, rel=1e-12)
