"""The network linearised at its initialisation: a frozen-kernel model that cannot catapult.

``Linearized(base)`` computes ``f_lin(θ; x) = f(θ₀; x) + J_θ f(θ₀; x) (θ − θ₀)``, with ``θ₀``
the parameters ``base`` holds when wrapped (kept in ``base``, never trained) and ``θ`` the
trainable parameters (``theta``, initialised at ``θ₀``). It is linear in ``θ``, so its empirical
NTK is ``K(θ₀)`` at every step: gradient descent on it converges below ``η_crit`` and diverges
above, and it has no mechanism for a catapult (λ_max cannot fall). Trained with the same data,
initial weights, batches and learning rate as the network, it is the null against which SGD
spikes are compared (issue 15: a detector that counts spikes of the linearised network as
catapults is counting noise).

The forward pass is one ``torch.func.jvp`` through ``base`` (about 2-3x a plain forward). The
curvature functions (:func:`catapults.ntk.empirical_ntk`, :func:`~catapults.ntk.ntk_matvec`)
use :meth:`Linearized.tangent_module` to compute the kernel on ``base`` at ``θ₀`` by the fast
path; computing it directly through the Jacobian of ``f_lin`` gives the same kernel (the
parameters of ``base`` are detached inside the forward pass, so they contribute nothing).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call, jvp

__all__ = ["Linearized"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class Linearized(nn.Module):
    """``base`` linearised in its parameters at their current values (see the module
    docstring). Inputs and outputs are those of ``base``: ``(n, ...) -> (n, c)``."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self._names = [n for n, p in base.named_parameters() if p.requires_grad]
        self.theta = nn.ParameterDict({_key(n): nn.Parameter(p.detach().clone())
                                       for n, p in base.named_parameters() if p.requires_grad})
        for attr in ("in_dim", "out_dim"):  # what the toolkit reads off its models
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def tangent_module(self) -> nn.Module:
        """The module whose empirical NTK at its own parameters is this model's NTK: ``base``
        at ``θ₀``."""
        return self.base

    def forward(self, x: Tensor) -> Tensor:
        p0 = {n: p.detach() for n, p in self.base.named_parameters() if n in self._names}
        tangent = {n: self.theta[_key(n)] - p0[n] for n in self._names}

        def f(params: dict[str, Tensor]) -> Tensor:
            return functional_call(self.base, params, (x,))

        f0, df = jvp(f, (p0,), (tangent,))
        return f0 + df
