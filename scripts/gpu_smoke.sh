#!/usr/bin/env bash
# CUDA smoke check (run on a machine with a GPU and PyTorch installed; wheels for the few other
# dependencies may sit in .whl/). Writes its log and a demo run under ${OUT:-/tmp/gpu_smoke}.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_smoke}
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2; fi
export PYTHONPATH=$PWD/src
python3 - <<'PY' 2>&1 | tee "$OUT/smoke.log"
import time, torch
from catapults.models import MLP
from catapults.ntk import empirical_ntk, top_eigenpairs
from catapults.training import resolve_device
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))
assert resolve_device("auto").type == "cuda"
torch.manual_seed(0)
m = MLP(100, 1, width=1024, depth=3)
X = torch.randn(4000, 100)
K64 = empirical_ntk(m.double(), X.double())
mc, Xc = MLP(100, 1, width=1024, depth=3).cuda(), X.cuda()
mc.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
for method in ["fast", "generic"]:
    Xs = Xc if method == "fast" else Xc[:500]
    torch.cuda.synchronize(); t = time.perf_counter()
    K = empirical_ntk(mc, Xs, method=method, chunk_size=250)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    ref = K64[: Xs.shape[0], : Xs.shape[0]]
    err = ((K.double().cpu() - ref).abs().max() / ref.abs().max()).item()
    print(f"ntk {method} n={Xs.shape[0]} cuda {dt*1e3:.1f} ms, rel err vs cpu float64 {err:.2e}")
    assert err < 1e-4
vals, _ = top_eigenpairs(mc, Xc, 5)
print("top5 cuda", vals.tolist())
try:
    from catapults.agop import agop
    G = agop(mc, Xc[:1000]); G64 = agop(m.double(), X[:1000].double())
    print("agop rel err", ((G.double().cpu() - G64).abs().max() / G64.abs().max()).item())
except ImportError as e:
    print("agop not available:", e)
PY
python3 -m catapults.cli run examples/demo-multi-catapult.yaml --device cuda --out /tmp/gpu_runs/demo \
  --overwrite --no-progress --set output.checkpoint=false 2>&1 | tee -a "$OUT/smoke.log"
python3 -m catapults.cli run examples/sgd-batch32.yaml --device auto --out /tmp/gpu_runs/sgd \
  --overwrite --no-progress --set train.steps=300 --set output.checkpoint=false 2>&1 | tee -a "$OUT/smoke.log"
python3 -m catapults.cli inspect /tmp/gpu_runs/demo 2>&1 | tee -a "$OUT/smoke.log"
grep -h "\"device\"" /tmp/gpu_runs/*/summary.json | tee -a "$OUT/smoke.log"
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -15 | tee -a "$OUT/smoke.log"
