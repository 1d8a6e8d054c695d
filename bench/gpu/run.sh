#!/usr/bin/env bash
# `npm run bench:gpu` (or `bash bench/gpu/run.sh` where npm is absent): the GPU check, a few minutes on one GPU.
# Installs and downloads nothing; runs what the machine (or the working tree, see bench/gpu/README.md) provides:
#
#   1. PyTorch: bench/gpu/cknna_torch.py: the fp32/TF32 GEMM ceiling, the torch engine's own functions in-process,
#      and the dense torch baseline (platonic-rep's CKNNA) at DENSE_SIZES, if torch sees a GPU;
#   2. Node.js: the product's engines (torch, cuda, webgpu, and cpu at CPU_SIZES) through the library the CLI uses
#      (bench/gpu/cknna-gpu.bench.ts), each one that starts here;
#   3. a side-by-side table: seconds per engine, and for torch its fraction of the fp32 ceiling and its ratios to the
#      dense baseline, webgpu and cpu, with the device name.
#
# CKNNA at n = 20k and 100k (dA 4096, dB 1024, k 10) by default. Results also go to $OUT (default $TMPDIR/viral-lens-bench-gpu) as JSON. Exit status: 0 if at least one path ran and
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

PY=""
for candidate in ${VIRAL_LENS_PYTHON:-} ${PYTHON:-} python3 /usr/bin/python3; do
  if [ -n "$candidate" ] && "$candidate" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    PY=$candidate
    break
  fi
done

echo
echo "== 1. PyTorch: GEMM ceiling, the torch engine's tile loop in-process, dense torch baseline (platonic-rep style)"
if [ -z "$PY" ]; then
  echo "skipped: no python3 with torch that sees a CUDA GPU"
else
  if timeout "${TORCH_TIMEOUT:-600}" "$PY" bench/gpu/cknna_torch.py --sizes "$SIZES" --dense-sizes "${DENSE_SIZES:-20000}" --sweep-layers "${SWEEP_LAYERS:-33}" --sweep-n "${SWEEP_N:-100000}" --json "$OUT/torch-python.json"; then
    status=0
  else
    echo "PyTorch path FAILED (exit $?)"
    status=1
  fi
fi

echo
echo "== 2. viral-lens engines through Node.js (torch, cuda, webgpu; cpu at CPU_SIZES)"
NODE=${NODE:-$(command -v node || true)}
if [ -z "$NODE" ] && [ -x bench/gpu/vendor/usr/bin/node ]; then
  # Debian nodejs .debs unpacked into the working tree (bench/gpu/README.md).
  NODE=bench/gpu/vendor/usr/bin/node
  export LD_LIBRARY_PATH="$PWD/bench/gpu/vendor/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -z "$NODE" ]; then
  echo "skipped: no node binary (PATH, \$NODE or bench/gpu/vendor)"
elif [ ! -d node_modules/tsx ]; then
  echo "skipped: node_modules (tsx, onnxruntime-node) not present in the working tree"
else
  "$NODE" --version
  [ -n "$PY" ] && export VIRAL_LENS_PYTHON="$PY"
  "$NODE" --import tsx cli/main.ts doctor || true
  for engine in torch cuda webgpu cpu; do
    sizes=$SIZES
    gemm=8192,4096,8192
    # The CPU engine's GEMM ceiling is not the question here; a small one keeps the run short.
    [ "$engine" = cpu ] && sizes=${CPU_SIZES:-20000} && gemm=1024,1024,1024
    echo "-- engine $engine, n = $sizes"
    if timeout "${NODE_TIMEOUT:-300}" "$NODE" --import tsx bench/gpu/cknna-gpu.bench.ts --engine "$engine" --sizes "$sizes" --gemm "$gemm" --json "$OUT/node-$engine.json"; then
      [ "$status" = 3 ] && status=0
    else
      echo "engine $engine: did not run or failed (exit $?; see above)"
      rm -f "$OUT/node-$engine.json"
    fi
  done
fi

echo
echo "== 3. side by side"
PYSUM=${PY:-$(command -v python3 || true)}
if [ -n "$PYSUM" ]; then
  "$PYSUM" - "$OUT" <<'EOF2'
import glob, json, os, sys
out = sys.argv[1]
tp = json.load(open(os.path.join(out, 'torch-python.json'))) if os.path.exists(os.path.join(out, 'torch-python.json')) else None
if tp:
    print(f"device: {tp['device']}; fp32 GEMM ceiling {tp['gemm']['fp32_tflops']:.1f} TFLOP/s (TF32 {tp['gemm']['tf32_tflops']:.1f})")
dense = {r['n']: r.get('dense_seconds') for r in (tp or {}).get('cknna', [])}
if tp and tp.get('sweep'):
    sw = tp['sweep']
    print(f"sweep (engine functions in Python): {sw['layers']} layers x {sw['targets']} targets at n = {sw['n']}: {sw['seconds']:.1f} s")
ceiling = tp['gemm']['fp32_tflops'] if tp else float('nan')
runs = {}
for f in sorted(glob.glob(os.path.join(out, 'node-*.json'))):
    r = json.load(open(f))
    runs[os.path.basename(f)[5:-5]] = r
    print(f"{os.path.basename(f)[5:-5]:7s} {r['engine']}")
sizes = sorted({row['n'] for r in runs.values() for row in r['cknna']})
print(f"{'n':>8s} " + ' '.join(f"{e:>12s}" for e in runs) + '   torch: % of fp32 ceiling, x vs dense, x vs webgpu, x vs cpu')
for n in sizes:
    sec = {e: next((row['seconds'] for row in r['cknna'] if row['n'] == n), None) for e, r in runs.items()}
    cells = ' '.join(f"{(f'{v:.3f} s' if v else '-'):>12s}" for v in sec.values())
    t = sec.get('torch')
    notes = []
    if t:
        dA, dB = 4096, 1024
        notes.append(f"{100 * 2 * n * n * (dA + dB) / t / 1e12 / ceiling:.0f}%")
        notes.append(f"{dense[n] / t:.1f}x" if dense.get(n) else '-')
        notes.append(f"{sec['webgpu'] / t:.1f}x" if sec.get('webgpu') else '-')
        notes.append(f"{sec['cpu'] / t:.1f}x" if sec.get('cpu') else '-')
    print(f"{n:8d} {cells}   {', '.join(notes)}")
EOF2
fi

echo
case $status in
  0) echo "bench:gpu done; JSON in $OUT" ;;
  1) echo "bench:gpu: a path failed" ;;
  3) echo "bench:gpu: nothing could run here (no Node.js CUDA engine, no PyTorch with a GPU)" ;;
esac
exit $status
