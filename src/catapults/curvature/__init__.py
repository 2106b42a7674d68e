"""Curvature: the empirical NTK (:mod:`~catapults.curvature.ntk`), its spectrum, critical learning
rates and loss split (:mod:`~catapults.curvature.spectrum`), and the AGOP
(:mod:`~catapults.curvature.agop`). Plain functions of an ``nn.Module`` and tensors: nothing here
knows of configs, models' construction or training. Conventions: docs/conventions.md."""
