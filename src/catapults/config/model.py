"""The ``model`` section: one flat set of fields for every architecture.

Why flat: ``depth``, ``width`` and ``activation`` mean the natural thing in each architecture
(the companion paper speaks of the *width* of a fully connected net and of a CNN alike, and a
sweep can grid ``model.width`` across architectures), and each architecture adds a few fields of
its own (``kernel_size``; ``widen_factor``; ``patch_size``, ``heads``...). Every field that
depends on the architecture defaults to None: a field the chosen ``arch`` uses is filled with
that architecture's default (:data:`ARCH_DEFAULTS`), so a resolved config names every value the
model was built with; a field it does not use stays None, and giving it a value is an error
naming the field (``model.heads: not used by arch 'mlp' ...``). :data:`ARCH_FIELDS` is the table.
No torch here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from catapults.config.fields import _Section

ARCHS = ("mlp", "cnn", "wrn", "vit", "import")

_COMMON = ("activation", "bias", "parameterization", "bias_scale")
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "mlp": ("depth", "width", *_COMMON),
    "cnn": ("depth", "width", "kernel_size", "pool", "norm", *_COMMON),
    "wrn": ("depth", "widen_factor", "norm", *_COMMON),
    "vit": ("depth", "width", "patch_size", "heads", "mlp_ratio", *_COMMON),
    "import": ("factory", "kwargs"),
}
"""The architecture-dependent fields each ``arch`` uses (``arch`` and ``out_dim`` apply to all);
they are the keyword arguments of the architecture's builder in :mod:`catapults.models`."""

ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"depth": 2, "width": 1024, "activation": "relu"},
    "cnn": {"depth": 2, "width": 64, "kernel_size": 3, "pool": "none", "norm": "none",
            "activation": "relu"},
    "wrn": {"depth": 16, "widen_factor": 4, "norm": "group", "activation": "relu"},
    "vit": {"depth": 4, "width": 64, "patch_size": 4, "heads": 4, "mlp_ratio": 2.0,
            "activation": "gelu"},
    "import": {"kwargs": {}},
}
for _arch, _fields in ARCH_FIELDS.items():
    if _arch != "import":
        ARCH_DEFAULTS[_arch].update({"bias": False, "parameterization": "ntk", "bias_scale": 1.0})
IMAGE_ARCHS = ("cnn", "wrn", "vit")
"""Architectures that take image inputs ``(n, C, H, W)``."""

_FACTORY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:"
                      r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def unused_fields(arch: str) -> set[str]:
    """The architecture-dependent fields that ``arch`` does not use (they stay None)."""
    return {f for fields in ARCH_FIELDS.values() for f in fields} - set(ARCH_FIELDS[arch])


def _users(name: str) -> list[str]:
    return [a for a, fields in ARCH_FIELDS.items() if name in fields]


class ModelConfig(_Section):
    arch: Literal["mlp", "cnn", "wrn", "vit", "import"] = Field(
        "mlp", description="Architecture: 'mlp' (fully connected), 'cnn' (plain conv net, global "
        "average pool, linear head), 'wrn' (Wide ResNet), 'vit' (vision transformer), or "
        "'import' (any nn.Module from `factory`). cnn/wrn/vit need image data (n, C, H, W). "
        "Fields another arch uses stay null and may not be set.")
    depth: int | None = Field(
        None, ge=1, le=1000,
        description="None: the arch's default. mlp: number of linear layers (2 = one hidden "
        "layer, the paper's '2-layer net'; default 2); cnn: conv layers before the head (2); "
        "wrn: the Wide ResNet depth 6N+4 (16); vit: transformer blocks (4).")
    width: int | None = Field(
        None, ge=1, le=2**20,
        description="None: the arch's default. mlp: hidden width (1024); cnn: channels of every "
        "conv layer (64; the companion paper's CNN has width 1000-1024); vit: embedding "
        "dimension (64).")
    activation: Literal[
        "relu", "gelu", "tanh", "sigmoid", "silu", "softplus", "identity"] | None = Field(
        None, description="Hidden activation (None: gelu for vit, relu otherwise).")
    bias: bool | None = Field(
        None, description="Biases in linear and conv layers (None: false; not for 'import').")
    parameterization: Literal["ntk", "standard"] | None = Field(
        None,
        description="None: 'ntk'. 'ntk': dense layers compute W x / sqrt(fan_in) + bias_scale*b "
        "with W, b ~ N(0, 1) (docs/conventions.md), convs likewise with fan_in = "
        "in_channels/groups x kernel area; 'standard': PyTorch's default initialisation, no "
        "1/sqrt(fan_in) factor. Norm layers' affine weights and ViT tokens are not scaled.",
    )
    bias_scale: float | None = Field(
        None, ge=0.0, description="beta in the NTK parameterisation (None: 1.0).")
    kernel_size: int | None = Field(
        None, ge=1, le=63, description="cnn: odd conv kernel size, 'same' padding (3).")
    pool: Literal["none", "max", "avg"] | None = Field(
        None, description="cnn: 2x2 pooling (stride 2) after each conv layer while the feature "
        "map is at least 2x2: 'max', 'avg' or 'none' (default); a global average pool always "
        "precedes the linear head.")
    norm: Literal["none", "batch", "layer", "group"] | None = Field(
        None, description="cnn ('none') / wrn ('group'): normalisation after each conv: "
        "'batch' (BatchNorm2d; trained with batch statistics, but the NTK, critical rates and "
        "evaluations use eval mode, i.e. its running statistics), 'layer' (GroupNorm with one "
        "group: LayerNorm over C, H, W), 'group' (GroupNorm with gcd(channels, 8) groups), "
        "'none'. Affine weights start at 1, biases at 0, unscaled in both parameterisations.")
    widen_factor: int | None = Field(
        None, ge=1, le=64, description="wrn: widen factor k (widths 16k, 32k, 64k; "
        "WRN-16-4 is depth 16, k 4; default 4).")
    patch_size: int | None = Field(
        None, ge=1, le=1024, description="vit: square patch size (must divide the image "
        "height and width; default 4).")
    heads: int | None = Field(
        None, ge=1, le=1024, description="vit: attention heads (must divide width; default 4).")
    mlp_ratio: float | None = Field(
        None, gt=0.0, le=64.0,
        description="vit: hidden width of each block's MLP over width (default 2.0).")
    factory: str | None = Field(
        None, max_length=500,
        description="import: 'package.module:function' returning an nn.Module that maps inputs "
        "(n, ...) to outputs (n, c); called as function(**kwargs) under torch.manual_seed("
        "train.seed), then cast to train.dtype. It must be importable when a run or its "
        "checkpoint is loaded.")
    kwargs: dict[str, Any] | None = Field(
        None, description="import: keyword arguments of `factory` (plain YAML values; "
        "recorded with it in the run's model spec).")
    out_dim: int | None = Field(
        None, ge=1, description="Output dimension (None: taken from the data's targets)."
    )
    linearize: bool = Field(
        False,
        description="Train the network linearised at its initialisation, f(θ0) + J(θ0)(θ - θ0) "
        "(any arch): its NTK is frozen, so it cannot catapult (the null model of `reproduce "
        "sgd-spikes`).",
    )

    @model_validator(mode="after")
    def _resolve_arch(self) -> ModelConfig:
        """Fill the fields the arch uses with its defaults, refuse values for the others."""
        used = ARCH_FIELDS[self.arch]
        given = self.model_fields_set
        for name in sorted({f for fields in ARCH_FIELDS.values() for f in fields}):
            value = getattr(self, name)
            if name not in used:
                if value is not None and name in given:
                    raise ValueError(
                        f"model.{name}: not used by arch {self.arch!r} (only by "
                        f"{', '.join(repr(a) for a in _users(name))}); remove it")
                self.__dict__[name] = None
            elif value is None or name not in given:  # a default (also after arch changes)
                self.__dict__[name] = ARCH_DEFAULTS[self.arch].get(name)
        self._check_arch()
        return self

    def _check_arch(self) -> None:
        if self.arch in ("mlp", "cnn", "vit") and self.depth > 64:
            raise ValueError(f"model.depth: at most 64 for arch {self.arch!r}, got {self.depth}")
        if self.arch == "wrn" and (self.depth < 10 or (self.depth - 4) % 6):
            raise ValueError(f"model.depth: a Wide ResNet has depth 6N+4 with N >= 1 (10, 16, "
                             f"22, 28, 40, ...), got {self.depth}")
        if self.arch == "cnn" and self.kernel_size % 2 == 0:
            raise ValueError(f"model.kernel_size: must be odd ('same' padding), got "
                             f"{self.kernel_size}")
        if self.arch == "vit" and self.width % self.heads:
            raise ValueError(f"model.heads: width {self.width} is not divisible by "
                             f"{self.heads} heads")
        if self.arch == "import":
            why = _not_plain(self.kwargs)
            if why:
                raise ValueError(f"model.kwargs: {why}")
            if self.factory is None:
                raise ValueError("model.factory: arch 'import' needs factory: "
                                 "'package.module:function'")
            if not _FACTORY.match(self.factory):
                raise ValueError(f"model.factory: {self.factory[:80]!r} is not of the form "
                                 "'package.module:function'")


def _not_plain(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not a plain YAML / checkpoint value (str, number, bool, null, and lists
    and string-keyed mappings of them), or None."""
    if depth > 32:
        return "nested too deeply"
    if value is None or isinstance(value, (str, int, float, bool)):
        return None
    if isinstance(value, (list, tuple)):
        return next((w for w in (_not_plain(v, depth + 1) for v in value) if w), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return "keys must be strings"
        return next((w for w in (_not_plain(v, depth + 1) for v in value.values()) if w), None)
    return f"a {type(value).__name__} is not a plain value (string, number, list, mapping)"


def model_spec(model: ModelConfig, *, in_shape: list[int], out_dim: int, seed: int,
               dtype: str) -> dict[str, Any]:
    """The plain spec that :func:`catapults.models.build_model` builds and a checkpoint
    records: ``arch``, the fields the arch uses (:data:`ARCH_FIELDS`), ``in_dim`` (inputs'
    size per sample), ``out_dim`` (``model.out_dim`` or the data's), ``seed``, ``dtype``, and
    for image architectures ``in_shape`` ``[C, H, W]``. An MLP's spec is as before image models
    existed, so old checkpoints and new ones read alike."""
    spec: dict[str, Any] = {"arch": model.arch}
    spec.update({name: getattr(model, name) for name in ARCH_FIELDS[model.arch]})
    in_dim = 1
    for s in in_shape:
        in_dim *= int(s)
    spec.update(in_dim=in_dim, out_dim=model.out_dim or out_dim, seed=seed, dtype=dtype)
    if model.arch in IMAGE_ARCHS:
        spec["in_shape"] = [int(s) for s in in_shape]
    if model.linearize:  # recorded only when set: other specs read as before
        spec["linearize"] = True
    return spec
