"""The NTK engine's parts: the generic per-sample path (:mod:`.generic`) and the layer-rule
registry with its rules (linear, conv, norms, embedding, attention) and the engine that sums
them (see :mod:`catapults.curvature.ntk` for the public entry points)."""
