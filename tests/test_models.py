"""The architectures (mlp, cnn, wrn, vit, arch: import): built from config in both
parameterisations, their NTK and critical rate against the float64 vmap(jacrev) reference, runs
from config (API and CLI), checkpoints and resume, a catapult in a CNN, and bad input."""

import json
import math

import pytest
import torch
import yaml
from references import reference_critical_lr, reference_kernel
from torch import nn

from catapults import cli
from catapults.config import ConfigError, config_from_dict, describe_defaults
from catapults.config.model import ARCH_FIELDS, model_spec
from catapults.models import (
    CNN,
    MAX_PARAMETER_BYTES,
    ScaledConv2d,
    ViT,
    WideResNet,
    build_model,
    count_parameters,
)
from catapults.ntk import critical_lr, empirical_ntk
from catapults.runs import load_run_model, run

SHAPE = [1, 8, 8]  # scikit-learn's digits
TINY = {  # arch -> a tiny instance's fields
    "cnn": {"width": 6, "depth": 2, "pool": "max"},
    "wrn": {"depth": 10, "widen_factor": 1, "norm": "group"},
    "vit": {"width": 8, "depth": 1, "heads": 2, "patch_size": 4},
}


def spec(arch, par="ntk", out_dim=2, dtype="float64", **fields):
    cfg = config_from_dict({"model": {"arch": arch, "parameterization": par, "bias": True,
                                      **TINY[arch], **fields}})
    return model_spec(cfg.model, in_shape=SHAPE, out_dim=out_dim, seed=3, dtype=dtype)


def digits_config(arch, steps=4, **model):
    return {"data": {"name": "digits", "classes": [0, 1], "n_train": 24, "n_test": 16},
            "model": {"arch": arch, **TINY.get(arch, {}), **model},
            "train": {"optimizer": "gd", "lr": 0.2, "steps": steps, "eval_every": 2,
                      "device": "cpu"},
            "output": {"progress": False, "figures": False}}


# ---- building -------------------------------------------------------------------------------
@pytest.mark.parametrize("par", ["ntk", "standard"])
@pytest.mark.parametrize("arch", ["cnn", "wrn", "vit"])
def test_each_architecture_builds_from_its_spec_in_both_parameterisations(arch, par):
    s = spec(arch, par, dtype="float32")
    model = build_model(s)
    X = torch.randn(5, *SHAPE)
    out = model(X)
    assert out.shape == (5, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert s["in_shape"] == SHAPE and s["in_dim"] == 64
    assert sum(p.numel() for p in model.parameters()) == count_parameters(s)
    torch.testing.assert_close(build_model(s)(X), out, rtol=0, atol=0)  # seeded: same model
    assert set(s) == {"arch", *ARCH_FIELDS[arch], "in_dim", "out_dim", "seed", "dtype",
                      "in_shape"}


def test_mlp_spec_and_resolved_config_are_as_before_image_models():
    cfg = config_from_dict({"model": {"width": 16}})
    s = model_spec(cfg.model, in_shape=[10], out_dim=1, seed=0, dtype="float32")
    assert s == {"arch": "mlp", "depth": 2, "width": 16, "activation": "relu", "bias": False,
                 "parameterization": "ntk", "bias_scale": 1.0, "in_dim": 10, "out_dim": 1,
                 "seed": 0, "dtype": "float32"}
    assert cfg.to_dict()["model"] == {  # the resolved config: only the fields an MLP uses
        "arch": "mlp", "depth": 2, "width": 16, "activation": "relu", "bias": False,
        "parameterization": "ntk", "bias_scale": 1.0, "out_dim": None}
    assert cfg.model.heads is None and cfg.model.factory is None
    vit = config_from_dict({"model": {"arch": "vit"}}).to_dict()["model"]
    assert "kernel_size" not in vit and vit["heads"] == 4


def test_arch_defaults_are_filled_and_the_resolved_config_reloads():
    for arch in ["cnn", "wrn", "vit"]:
        cfg = config_from_dict({"model": {"arch": arch}})
        again = config_from_dict(cfg.to_dict())
        assert again.to_dict() == cfg.to_dict()
        assert all(getattr(cfg.model, f) is not None for f in ARCH_FIELDS[arch])
    wrn = config_from_dict({"model": {"arch": "wrn"}}).model
    assert (wrn.depth, wrn.widen_factor, wrn.norm, wrn.width) == (16, 4, "group", None)
    vit = config_from_dict({"model": {"arch": "vit"}}).model
    assert vit.activation == "gelu" and vit.heads == 4


def test_config_show_documents_the_new_fields():
    text = describe_defaults()
    for field in ["arch:", "kernel_size:", "pool:", "norm:", "widen_factor:", "patch_size:",
                  "heads:", "mlp_ratio:", "factory:", "kwargs:"]:
        assert f"\n  {field}" in text, field
    assert "'import'" in text and "eval mode" in text


# ---- parameterisation -----------------------------------------------------------------------
def test_scaled_conv_is_the_ntk_formula_with_fan_in_over_groups():
    gen = torch.Generator().manual_seed(0)
    conv = ScaledConv2d(4, 6, 3, padding=1, groups=2, bias=True, bias_scale=0.5,
                        generator=gen, dtype=torch.float64)
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    fan_in = 4 // 2 * 9
    want = nn.functional.conv2d(x, conv.weight / math.sqrt(fan_in), 0.5 * conv.bias,
                                padding=1, groups=2)
    torch.testing.assert_close(conv(x), want)
    w = ScaledConv2d(32, 64, 3, generator=gen).weight.detach()
    assert abs(float(w.std()) - 1.0) < 0.05 and abs(float(w.mean())) < 0.05  # N(0, 1)
    std = ScaledConv2d(32, 64, 3, parameterization="standard", bias=True, generator=gen)
    bound = 1 / math.sqrt(32 * 9)  # nn.Conv2d's default init: U(-1/sqrt(fan_in), ...)
    w_max, b_max = float(std.weight.detach().abs().max()), float(std.bias.detach().abs().max())
    assert std.weight_scale == 1.0 and 0.9 * bound < w_max <= bound and b_max <= bound


@pytest.mark.parametrize("arch,small,large", [
    ("cnn", {"width": 16}, {"width": 256}),
    ("vit", {"width": 8, "heads": 2}, {"width": 128, "heads": 2}),
    ("wrn", {"widen_factor": 1}, {"widen_factor": 4}),
])
def test_ntk_output_variance_at_init_does_not_grow_with_width(arch, small, large):
    """NTK parameterisation: f(x) at init is O(1) whatever the width (variance over seeds)."""
    X = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    variances = []
    for fields in (small, large):
        outs = []
        for seed in range(16):
            s = {**spec(arch, dtype="float32", **fields), "seed": seed}
            with torch.no_grad():
                outs.append(build_model(s)(X))
        variances.append(float(torch.stack(outs).var(0).mean()))
    ratio = variances[1] / variances[0]
    assert 0.3 < ratio < 3.0, variances
    assert 0.05 < variances[1] < 50, variances


# ---- the kernel against the float64 reference -----------------------------------------------
@pytest.mark.parametrize("par", ["ntk", "standard"])
@pytest.mark.parametrize("arch,extra", [
    ("cnn", {}), ("cnn", {"norm": "layer", "pool": "avg", "kernel_size": 5}),
    ("wrn", {}), ("wrn", {"norm": "batch"}), ("vit", {}),
])
def test_empirical_ntk_and_critical_lr_match_the_vmap_jacrev_reference(arch, extra, par):
    model = build_model(spec(arch, par, **extra)).eval()
    if extra.get("norm") == "batch":  # running statistics that are not the identity
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    X = torch.randn(5, *SHAPE, dtype=torch.float64)
    for kind in ("full", "trace"):
        K = empirical_ntk(model, X, kind=kind)
        torch.testing.assert_close(K, reference_kernel(model, X, kind, how="vmap"),
                                   rtol=1e-9, atol=1e-9)
    assert critical_lr(model, X) == pytest.approx(reference_critical_lr(model, X), rel=1e-8)


def test_batchnorm_in_training_mode_is_refused_for_the_kernel():
    model = build_model(spec("wrn", norm="batch"))
    with pytest.raises(Exception, match="training mode"):
        empirical_ntk(model.train(), torch.randn(3, *SHAPE, dtype=torch.float64))


# ---- runs from config -----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cnn", "wrn", "vit"])
def test_a_run_from_config_completes_and_its_model_reloads(tmp_path, arch):
    raw = digits_config(arch)
    raw["monitor"] = {"ntk": {"enabled": True, "every": 2, "k": 2}}
    res = run(config_from_dict(raw), out_dir=tmp_path / "run")
    assert res.status == "completed" and res.summary["monitors"]["ntk"]["measurements"] == 2
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["model_spec"]["arch"] == arch and ckpt["model_spec"]["in_shape"] == SHAPE
    model, cfg = load_run_model(tmp_path / "run")
    assert type(model) is type(res.model) and cfg.model.arch == arch
    X = torch.randn(3, *SHAPE)
    torch.testing.assert_close(model.eval()(X), res.model.eval()(X), rtol=0, atol=0)


def test_cli_runs_cnn_wrn_and_vit(tmp_path, capsys):
    for arch in ["cnn", "wrn", "vit"]:
        path = tmp_path / f"{arch}.yaml"
        path.write_text(yaml.safe_dump(digits_config(arch, steps=2)))
        assert cli.main(["run", str(path), "--out", str(tmp_path / arch), "--no-progress"]) == 0
        assert (tmp_path / arch / "summary.json").is_file()
    capsys.readouterr()


def test_wrn_with_batchnorm_trains_in_training_mode_and_measures_in_eval_mode(tmp_path):
    raw = digits_config("wrn", steps=3, norm="batch")
    raw["train"]["schedule"] = {"kind": "critical", "milestones": [1], "values": [0.5]}
    raw["monitor"] = {"ntk": {"enabled": True, "every": 1, "k": 1}}
    res = run(config_from_dict(raw), out_dir=tmp_path / "run")
    assert res.status == "completed"
    bn = next(m for m in res.model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 3 and not bn.training  # 3 updates in training mode


def test_a_cnn_run_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    import catapults.runs as runs
    from catapults.runs import resume

    raw = digits_config("cnn", steps=12, norm="batch")  # BatchNorm buffers in the checkpoint
    raw["train"].update(optimizer="sgd", batch_size=8, lr=0.1, threads=1)
    raw["output"]["checkpoint_every"] = 4
    ref = run(config_from_dict(raw), out_dir=tmp_path / "ref")
    real = runs.save_checkpoint

    def save(path, ckpt):
        real(path, ckpt)
        if ckpt.get("resumable") and ckpt["step"] == 8:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runs, "save_checkpoint", save)
        with pytest.raises(KeyboardInterrupt):
            run(config_from_dict(raw), out_dir=tmp_path / "out")
    res = resume(tmp_path / "out")
    assert res.status == "completed" and res.summary["resumed_from"] == [8]
    assert res.history == ref.history
    for a, b in zip(res.model.state_dict().values(), ref.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_cnn_catapults_above_its_critical_rate(tmp_path):
    """GD raised to 1.5x the measured critical rate at step 20: the loss spikes and recovers,
    and lambda_max of the kernel is lower after the spike (the catapult mechanism)."""
    raw = {"data": {"name": "digits", "classes": [0, 1], "n_train": 64, "n_test": 16},
           "model": {"arch": "cnn", "width": 64, "depth": 1},
           "train": {"optimizer": "gd", "lr": 0.1, "steps": 45, "device": "cpu", "threads": 1,
                     "schedule": {"kind": "critical", "milestones": [20], "values": [1.5]}},
           "monitor": {"events": {"enabled": True}, "ntk": {"enabled": True, "every": 10,
                                                            "k": 1}},
           "output": {"progress": False, "figures": False, "checkpoint": False}}
    res = run(config_from_dict(raw), out_dir=tmp_path / "run")
    assert res.status == "completed"
    events = [e for e in json.loads((tmp_path / "run" / "events.json").read_text())["events"]
              if e["kind"] == "catapult"]
    assert events, "no catapult"
    e = events[0]
    assert e["start"] >= 20 and e["recovered"] and e["peak_loss"] > 3 * e["baseline_loss"]
    assert e["info"]["lambda_max_after"] < e["info"]["lambda_max_before"]


# ---- arch: import ---------------------------------------------------------------------------
def test_an_imported_model_runs_and_reloads_from_its_recorded_spec(tmp_path):
    raw = digits_config("import", factory="model_factories:tiny_cnn",
                        kwargs={"channels": 1, "width": 5})
    res = run(config_from_dict(raw), out_dir=tmp_path / "run")
    assert res.status == "completed"
    spec_ = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model_spec"]
    assert spec_["factory"] == "model_factories:tiny_cnn"
    assert spec_["kwargs"] == {"channels": 1, "width": 5}
    model, _ = load_run_model(tmp_path / "run")
    X = torch.randn(3, *SHAPE)
    torch.testing.assert_close(model(X), res.model(X), rtol=0, atol=0)
    state = torch.get_rng_state()
    a, b = build_model(spec_), build_model(spec_)  # seeded by train.seed, global RNG untouched
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


# ---- bad input ------------------------------------------------------------------------------
BAD = {
    "unknown arch": ({"model": {"arch": "resnet"}}, "model.arch"),
    "heads with mlp": ({"model": {"heads": 4}}, "model.heads"),
    "kernel_size with vit": ({"model": {"arch": "vit", "kernel_size": 3}}, "model.kernel_size"),
    "width with wrn": ({"model": {"arch": "wrn", "width": 64}}, "model.width"),
    "factory with cnn": ({"model": {"arch": "cnn", "factory": "a:b"}}, "model.factory"),
    "wrn depth": ({"model": {"arch": "wrn", "depth": 12}}, "model.depth"),
    "even kernel": ({"model": {"arch": "cnn", "kernel_size": 4}}, "model.kernel_size"),
    "heads and width": ({"model": {"arch": "vit", "width": 10, "heads": 4}}, "model.heads"),
    "patch size": ({"model": {"arch": "vit", "patch_size": 3}}, "model.patch_size"),
    "synthetic cnn": ({"data": {"name": "synthetic", "d": 5}, "model": {"arch": "cnn"}},
                      "model.arch"),
    "no factory": ({"model": {"arch": "import"}}, "model.factory"),
    "malformed": ({"model": {"arch": "import", "factory": "no colon"}}, "model.factory"),
    "no module": ({"model": {"arch": "import", "factory": "no_such_module_xyz:f"}},
                  "model.factory"),
    "no attribute": ({"model": {"arch": "import", "factory": "model_factories:nope"}},
                     "model.factory"),
    "not callable": ({"model": {"arch": "import", "factory": "model_factories:NOT_CALLABLE"}},
                     "model.factory"),
    "not a module": ({"model": {"arch": "import", "factory": "model_factories:not_a_module"}},
                     "model.factory"),
    "factory raises": ({"model": {"arch": "import", "factory": "model_factories:raises"}},
                       "model.factory"),
    "wrong outputs": ({"model": {"arch": "import", "factory": "model_factories:wrong_outputs"}},
                      "model.factory"),
    "bad kwargs": ({"model": {"arch": "import", "factory": "model_factories:tiny_cnn",
                              "kwargs": {"nope": 1}}}, "model.factory"),
    "huge": ({"model": {"arch": "cnn", "width": 2**19, "depth": 8}}, "model.width"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_input_exits_2_naming_the_field_and_writes_nothing(tmp_path, capsys, case):
    change, field = BAD[case]
    raw = digits_config("mlp", steps=2)
    raw["model"] = {}
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    if raw["data"]["name"] == "synthetic":
        raw["data"] = {"name": "synthetic", "d": 5, "n_train": 8, "n_test": 8}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert cli.main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catapults: error: ") and err.count("\n") == 1, err
    assert field in err and "Traceback" not in err, err
    assert not out.exists()
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from catapults.runs import check_config
        check_config(config_from_dict(raw))


def test_the_parameter_budget_is_checked_without_building(tmp_path):
    import time

    s = {**spec("cnn", dtype="float32"), "width": 2**19, "depth": 8}
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="model.width"):
        build_model(s)
    assert time.perf_counter() - t0 < 5
    assert count_parameters(s) * 4 > MAX_PARAMETER_BYTES


def test_model_classes_are_exported():
    assert {CNN, ViT, WideResNet}
