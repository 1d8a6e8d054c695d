#!/usr/bin/env bash
# `npm run bench:gpu` (or `bash bench/gpu/run.sh` where npm is absent): the GPU check, a few minutes on one GPU.
# Installs and downloads nothing; runs what the machine (or the working tree, see bench/gpu/README.md) provides:
#
#   1. Node.js path: viral-lens's own CUDA engine (onnxruntime-node + its CUDA provider libraries), if present;
#   2. PyTorch path: bench/gpu/cknna_torch.py (GEMM ceiling, CUDA CKNNA with the same semantics), if torch sees a GPU.
#
# Both print the GEMM TFLOP/s, the CKNNA time at n = 20k and 100k (dA 4096, dB 1024) and its fraction of the GEMM
# ceiling. Results also go to $OUT (default $TMPDIR/viral-lens-bench-gpu) as JSON. Exit status: 0 if at least one path ran and
# passed its correctness check, 1 if a path failed, 3 if neither could run here.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-${TMPDIR:-/tmp}/viral-lens-bench-gpu}
mkdir -p "$OUT"
SIZES=${SIZES:-20000,100000}
status=3

echo "== machine"
uname -srm
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
  echo "nvidia-smi: not found"
fi

# CUDA libraries from a pip-installed PyTorch (site-packages/nvidia/*/lib) serve onnxruntime's CUDA provider too.
py_for_libs=$(command -v python3 || true)
if [ -n "$py_for_libs" ]; then
  nv_libs=$("$py_for_libs" - <<'EOF' 2>/dev/null
import glob, os, site
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(glob.glob(os.path.join(base, 'nvidia', '*', 'lib')))
print(':'.join(dirs))
EOF
)
  [ -n "$nv_libs" ] && export LD_LIBRARY_PATH="${nv_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo
echo "== 1. Node.js: viral-lens CUDA engine"
NODE=${NODE:-$(command -v node || true)}
if [ -z "$NODE" ] && [ -x bench/gpu/vendor/usr/bin/node ]; then
  # Debian nodejs .debs unpacked into the working tree (bench/gpu/README.md).
  NODE=bench/gpu/vendor/usr/bin/node
  export LD_LIBRARY_PATH="$PWD/bench/gpu/vendor/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
ort_dir=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
if [ -z "$NODE" ]; then
  echo "skipped: no node binary (PATH, \$NODE or bench/gpu/vendor)"
elif [ ! -d node_modules/tsx ] || [ ! -f "$ort_dir/libonnxruntime.so.1" ]; then
  echo "skipped: node_modules (tsx, onnxruntime-node) not present in the working tree"
elif [ ! -f "$ort_dir/libonnxruntime_providers_cuda.so" ]; then
  echo "skipped: onnxruntime-node's CUDA provider is not installed in $ort_dir (docs/scale.md, CUDA provider)"
else
  "$NODE" --version
  "$NODE" --import tsx cli/main.ts doctor || true
  if timeout "${NODE_TIMEOUT:-300}" "$NODE" --import tsx bench/gpu/cknna-gpu.bench.ts --engine cuda --sizes "$SIZES" --json "$OUT/node-cuda.json"; then
    status=0
  else
    echo "Node.js CUDA path FAILED (exit $?)"
    status=1
  fi
fi

echo
echo "== 2. PyTorch: tiled CKNNA on the GPU"
PY=""
for candidate in ${PYTHON:-} python3 /usr/bin/python3; do
  if [ -n "$candidate" ] && "$candidate" -c 'import torch, numpy, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "skipped: no python3 with torch (and numpy) that sees a CUDA GPU"
else
  if timeout "${TORCH_TIMEOUT:-300}" "$PY" bench/gpu/cknna_torch.py --sizes "$SIZES" --json "$OUT/torch-cuda.json"; then
    [ "$status" = 3 ] && status=0
  else
    echo "PyTorch path FAILED (exit $?)"
    status=1
  fi
fi

echo
case $status in
  0) echo "bench:gpu done; JSON in $OUT" ;;
  1) echo "bench:gpu: a path failed" ;;
  3) echo "bench:gpu: nothing could run here (no Node.js CUDA engine, no PyTorch with a GPU)" ;;
esac
exit $status
