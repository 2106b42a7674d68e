#!/usr/bin/env bash
# `make bench`: run every benchmarks/bench_*.py in a benchmark-only environment.
#
# .bench-venv is a small venv layered on the project's .venv (a .pth file adds .venv's
# site-packages, so torch and catapults come from there, untouched); the benchmark-only
# packages go into .bench-venv alone, with --no-deps so pip never resolves torch:
#   nngeometry==0.4              (baseline (c) of bench_ntk.py)
#   PyHessian==0.1               (baseline of bench_hessian.py; needs numpy, from .venv)
#   hessian-eigenthings==1.0.0a5 (baseline of bench_hessian.py; needs numpy, scipy, tqdm,
#                                 all in .venv)
#   backpack-for-pytorch==1.7.1  (baseline (d) of bench_ntk_baselines.py; its declared
#   einops==0.8.1, unfoldNd==0.2.3 torchvision dependency is not needed for BatchGrad)
#
# neural-tangents (baseline (e) of bench_ntk_baselines.py) needs JAX, which stays out of the
# project's environments: a separate venv, $JAX_VENV (default: jax-venv next to the repository),
# built only when BENCH_JAX=1 (from python $JAX_BASE_PY, default python3.11) with
#   jax==0.4.23 jaxlib==0.4.23 numpy==1.26.4 scipy==1.11.4 ml_dtypes==0.3.2 opt_einsum==3.3.0
#   and --no-deps: neural-tangents==0.6.5 frozendict==2.4.4 typing_extensions==4.12.2
# (newer jax breaks neural-tangents 0.6.5; its tf2jax/TensorFlow dependency is only for
# neural_tangents.experimental, which the benchmark does not load). Without that venv the
# neural-tangents baseline is skipped with a message; nothing else changes.
#
# Usage: bash benchmarks/run.sh [--quick] [extra args, passed to every bench_*.py]
# Environment: PY (python of the project venv, default .venv/bin/python), BENCH_VENV
# (default .bench-venv), BENCH_OUT (folder for the JSON results, default runs/benchmarks,
# git-ignored), BENCH_WAIT_IDLE (seconds each timed call may wait for other processes to go
# quiet, default 3; 0 turns it off), BENCH_JAX=1 (build $JAX_VENV if absent), JAX_VENV,
# JAX_BASE_PY.
# Convention for bench_*.py: accept --quick; read BENCH_OUT (write BENCH_OUT/<name>.json,
# <name>-quick.json for --quick) and BENCH_WAIT_IDLE from the environment when set.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
BENCH_VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
export BENCH_OUT="${BENCH_OUT:-$ROOT/runs/benchmarks}"
export BENCH_WAIT_IDLE="${BENCH_WAIT_IDLE:-3}"
BENCH_PKGS=("nngeometry==0.4" "PyHessian==0.1" "hessian-eigenthings==1.0.0a5"
            "backpack-for-pytorch==1.7.1" "einops==0.8.1" "unfoldNd==0.2.3"
            "curvlinops-for-pytorch==3.0.1" "einconv==0.1.0" "opt-einsum==3.4.0"
            "linear_operator==0.6.1" "jaxtyping==0.3.11")
JAX_VENV="${JAX_VENV:-$(dirname "$ROOT")/jax-venv}"
JAX_BASE_PY="${JAX_BASE_PY:-python3.11}"

if [[ ! -x "$PY" ]]; then
    echo "run.sh: $PY not found; run 'make setup' first" >&2
    exit 1
fi

# ---- the benchmark environment ------------------------------------------------------------
if [[ ! -x "$BENCH_VENV/bin/python" ]]; then
    echo "run.sh: creating $BENCH_VENV" >&2
    "$PY" -m venv "$BENCH_VENV"
fi
MAIN_SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BENCH_SITE="$("$BENCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# addsitedir (not a bare path) so that .venv's own .pth files (the editable catapults) apply
echo "import site; site.addsitedir('$MAIN_SITE')" > "$BENCH_SITE/_catapults_main_venv.pth"
for pkg in "${BENCH_PKGS[@]}"; do
    name="${pkg%%==*}"
    want="${pkg#*==}"
    have="$("$BENCH_VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
    if [[ "$have" != "$want" ]]; then
        "$BENCH_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$pkg"
    fi
done
"$BENCH_VENV/bin/python" - <<'EOF'
import torch, catapults, nngeometry, pyhessian, hessian_eigenthings, backpack, curvlinops  # noqa: F401
print(f"bench env: torch {torch.__version__}, catapults from {catapults.__file__}", flush=True)
EOF

# ---- the JAX venv (neural-tangents), only on request ------------------------------------------
if [[ "${BENCH_JAX:-0}" == 1 && ! -x "$JAX_VENV/bin/python" ]]; then
    echo "run.sh: creating $JAX_VENV (BENCH_JAX=1)" >&2
    if ! { "$JAX_BASE_PY" -m venv "$JAX_VENV" &&
           "$JAX_VENV/bin/python" -m pip install -q --disable-pip-version-check \
               "jax==0.4.23" "jaxlib==0.4.23" "numpy==1.26.4" "scipy==1.11.4" \
               "ml_dtypes==0.3.2" "opt_einsum==3.3.0" &&
           "$JAX_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
               "neural-tangents==0.6.5" "frozendict==2.4.4" "typing_extensions==4.12.2"; }; then
        echo "run.sh: building $JAX_VENV failed; the neural-tangents baseline is skipped" >&2
        rm -rf "$JAX_VENV"
    fi
fi
if [[ -x "$JAX_VENV/bin/python" ]]; then
    export JAX_PYTHON="$JAX_VENV/bin/python"
    echo "bench env: neural-tangents baseline with $JAX_PYTHON" >&2
else
    echo "run.sh: no JAX venv at $JAX_VENV: the neural-tangents baseline of" \
         "bench_ntk_baselines.py is skipped (BENCH_JAX=1 builds it)" >&2
fi

# ---- the benchmarks -------------------------------------------------------------------------
mkdir -p "$BENCH_OUT"
status=0
shopt -s nullglob
for bench in "$ROOT"/benchmarks/bench_*.py; do
    name="$(basename "$bench" .py)"
    # pass on only the options this benchmark knows (its source mentions them), so that
    # `--quick` reaches the benchmarks that have a quick mode and does not break the others
    args=()
    drop=0
    for a in "$@"; do
        if [[ "$a" == --* ]]; then
            opt="${a%%=*}"
            if grep -q -- "\"$opt\"" "$bench"; then drop=0; args+=("$a"); else
                drop=1; echo "run.sh: $name has no $opt option; not passed" >&2; fi
        elif [[ $drop == 0 ]]; then
            args+=("$a")
        fi
    done
    echo "==== $name ${args[*]:-} ($(date -Is))"
    if ! "$BENCH_VENV/bin/python" "$bench" ${args[@]+"${args[@]}"}; then
        echo "run.sh: $name failed" >&2
        status=1
    fi
done
echo "results: $BENCH_OUT"
exit $status
