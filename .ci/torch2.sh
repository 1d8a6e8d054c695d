#!/usr/bin/env bash
# The torch engine and capture shim suites against PyTorch 2.x. Debian bookworm (CI, /usr/bin/python3) has torch 1.13;
# Debian trixie packages torch 2.6 for Python 3.13. This script downloads trixie's python3-torch and python3-numpy with
# every dependency (apt with its own state folder, the machine's apt is untouched), unpacks them into a folder
# (dpkg-deb -x: no chroot, no maintainer scripts, no root needed) and starts that python through trixie's own dynamic
# loader, so it loads only trixie's libraries yet sees this machine's files (/work, /tmp, /dev/shm, node) unchanged.
#
#   .ci/torch2.sh                 set up (once) and run the suites
#   .ci/torch2.sh --setup-only    only set up; prints the interpreter to use as VIRAL_LENS_PYTHON
#
# VIRAL_LENS_TORCH2_ROOT   where the trixie files go (default ~/.cache/viral-lens/torch2-trixie; 1 GB, 1.2 GB
#                          while it is set up)
# VIRAL_LENS_TORCH2_MIRROR Debian mirror (default http://deb.debian.org/debian)
# Needs: amd64 Linux, apt-get and dpkg-deb (Debian/Ubuntu), the Debian archive keyring with the trixie key
# (/usr/share/keyrings/debian-archive-keyring.gpg; bookworm's debian-archive-keyring has it), node + npm ci done.
# .ci/run runs it after npm test (docs/torch-engine.md, "Tested versions").
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

root=${VIRAL_LENS_TORCH2_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/viral-lens/torch2-trixie}
mirror=${VIRAL_LENS_TORCH2_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
packages='python3-torch python3-numpy'
# The ready stamp's first line: a root made for other packages / another mirror is rebuilt.
config="suite=trixie packages=$packages mirror=$mirror wrapper=2"
py=$root/usr/bin/viral-lens-python
setup_only=false
case "${1:-}" in
  --setup-only) setup_only=true ;;
  '') ;;
  *) echo "usage: .ci/torch2.sh [--setup-only]" >&2; exit 2 ;;
esac

say() { printf '== torch2: %s\n' "$*"; }
die() { printf 'torch2: %s\n' "$*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only amd64 is set up here (trixie's loader path is x86_64); this is $(uname -m)"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die 'needs apt-get and dpkg-deb (a Debian/Ubuntu machine)'
[ -r "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"

mkdir -p "$(dirname "$root")"
# One setup at a time per root (CI jobs sharing a cache folder).
exec 9>"$root.lock"
command -v flock >/dev/null && flock 9

setup() {
  local t0 work apt
  t0=$(date +%s)
  work=$root.partial
  apt=$work.apt
  rm -rf --one-file-system "$work" "$apt"
  mkdir -p "$apt"/etc/apt/{apt.conf.d,preferences.d,sources.list.d,trusted.gpg.d} "$apt"/var/lib/apt/lists/partial \
    "$apt"/var/cache/apt/archives/partial "$apt"/var/lib/dpkg "$apt"/log "$work"
  # An empty dpkg status: apt resolves the complete dependency closure, as for an empty system.
  : >"$apt"/var/lib/dpkg/status
  echo "deb [signed-by=$keyring] ${mirror%/} trixie main" >"$apt"/etc/apt/sources.list
  local opts=(-q -o "Dir=$apt" -o "Dir::Etc=$apt/etc/apt" -o "Dir::State::status=$apt/var/lib/dpkg/status"
    -o "Dir::Log=$apt/log" -o Debug::NoLocking=1 -o APT::Architecture=amd64 -o APT::Architectures::=amd64
    -o APT::Install-Recommends=0)
  # As root apt downloads as the user _apt, who may not be allowed into $root (a home folder).
  [ "$(id -u)" != 0 ] || opts+=(-o APT::Sandbox::User=root)
  say "apt-get update (trixie, $mirror)"
  apt-get "${opts[@]}" update >"$apt/log/update.txt" 2>&1 || { tail -n 20 "$apt/log/update.txt" >&2; die 'apt-get update failed'; }
  say "downloading $packages and their dependencies"
  apt-get "${opts[@]}" install -y --download-only $packages >"$apt/log/install.txt" 2>&1 ||
    { tail -n 20 "$apt/log/install.txt" >&2; die 'apt-get --download-only failed'; }
  local debs=("$apt"/var/cache/apt/archives/*.deb) bytes
  bytes=$(du -cb "${debs[@]}" | tail -n1 | cut -f1)
  say "unpacking ${#debs[@]} packages ($((bytes / 1000000)) MB)"
  for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$work"; done
  # Absolute links (/etc/..., /usr/...) would reach this machine's files: point them inside the root, relative.
  local link target dir
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    dir=$(dirname "$link")
    ln -sfn "$(realpath -sm --relative-to="$dir" "$work$target")" "$link"
  done < <(find "$work/usr" "$work/etc" -type l -lname '/*' -print0)
  # Started by trixie's ld.so with an explicit library path (blas/lapack are the folders update-alternatives would
  # point libblas.so.3 / liblapack.so.3 at); --argv0 makes sys.executable this script, so subprocesses of the tests
  # that run sys.executable get the same setup. The folder can be moved: paths are found from the script's own.
  cat >"$work/usr/bin/viral-lens-python" <<'EOF'
#!/bin/sh
# Debian trixie's python3.13 with its python3-torch, on this machine's files (written by viral-lens .ci/torch2.sh).
d=$(dirname "$(readlink -f "$0")")
m=${d%/bin}/lib/x86_64-linux-gnu
exec "$m/ld-linux-x86-64.so.2" --argv0 "$d/viral-lens-python" --library-path "$m:$m/blas:$m/lapack:${d%/bin}/lib" \
  "$d/python3.13" "$@"
EOF
  chmod +x "$work/usr/bin/viral-lens-python"
  rm -rf "$apt"
  rm -rf --one-file-system "$root"
  mv "$work" "$root"
  say "set up in $(($(date +%s) - t0)) s: $(du -sh "$root" | cut -f1) in $root"
}

# Every file the interpreter maps must be trixie's: a library of this machine (bookworm glibc, its torch or openblas)
# loaded by a missing path would make the run test a mix. Data files (locale, gconv cache) are not code.
verify() {
  "$py" - "$root" <<'EOF'
import sys
root = sys.argv[1].rstrip('/') + '/'
import numpy, torch
import viral_lens_torch.engine  # noqa: F401
x = torch.randn(64, 64)
torch.linalg.eigh(x @ x.T)
numpy.linalg.svd(numpy.ones((3, 3)))
if int(torch.__version__.split('.')[0]) < 2:
    sys.exit('torch2: expected torch >= 2, got %s' % torch.__version__)
foreign = set()
for line in open('/proc/self/maps'):
    parts = line.split(maxsplit=5)
    path = parts[5].strip() if len(parts) > 5 else ''
    if path.startswith('/') and not path.startswith(root) and not path.startswith('/dev/') and not path.endswith('(deleted)'):
        with open(path, 'rb') as f:
            if f.read(4) == b'\x7fELF':
                foreign.add(path)
if foreign:
    sys.exit('torch2: libraries from outside %s were loaded: %s' % (root, ', '.join(sorted(foreign))))
print('python %s, torch %s, numpy %s: only trixie libraries loaded' % (sys.version.split()[0], torch.__version__,
                                                                       numpy.__version__))
EOF
}

fresh=false
if [ "$(head -n1 "$root/.ready" 2>/dev/null)" != "$config" ]; then
  setup
  fresh=true
fi
info=$(PYTHONPATH=$repo/python verify) || die "$py failed the check above (delete $root to set it up again)"
! $fresh || printf '%s\n%s\n' "$config" "$(date -u +%FT%TZ)" >"$root/.ready"
say "$info"
say "interpreter: $py"
if $setup_only; then
  echo "$py"
  exit 0
fi

t0=$(date +%s)
say 'Python unittest suite (python/tests), deprecation and future warnings as errors'
PYTHONPATH=$repo/python VIRAL_LENS_REQUIRE_TORCH=1 PYTHONWARNINGS=error::DeprecationWarning,error::FutureWarning \
  "$py" -m unittest discover -s python/tests

say 'npm run build (the compiled-CLI test runs dist/)'
npm run -s build
say 'node tests: test/engine-torch.test.ts test/engine-torch-files.test.ts test/torch-shim.test.ts'
CI=true VIRAL_LENS_PYTHON=$py node --import tsx --test test/engine-torch.test.ts test/engine-torch-files.test.ts test/torch-shim.test.ts

say 'viral-lens doctor'
doctor=$(VIRAL_LENS_PYTHON=$py node bin/viral-lens.mjs doctor)
echo "$doctor" | grep -E '^torch' || true
echo "$doctor" | grep -qE '^torch: self-check passed' || die 'doctor: the torch engine did not pass its self-check'

say 'compare --engine torch vs --engine ref'
fx=$(mktemp -d)
trap 'rm -rf "$fx"' EXIT
"$py" -c "
import numpy as np, sys
r = np.random.default_rng(7)
a = r.standard_normal((300, 48)).astype(np.float32)
np.save(sys.argv[1] + '/A.npy', a)
np.save(sys.argv[1] + '/B.npy', (a @ r.standard_normal((48, 48)) + r.standard_normal((300, 48))).astype(np.float32))
" "$fx"
for case in 'cknna prh' 'mutual_knn l2' 'cycle_knn none' 'cka prh' 'unbiased_cka none' 'cosine l2'; do
  set -- $case
  v=()
  for engine in torch ref; do
    v+=("$(VIRAL_LENS_PYTHON=$py node bin/viral-lens.mjs compare "$fx/A.npy" "$fx/B.npy" --metric "$1" --preprocess "$2" \
      --engine "$engine" --json | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>console.log(JSON.parse(s).value))')")
  done
  node -e 'const [m, p, t, r] = process.argv.slice(1); const d = Math.abs(t - r);
    console.log(`${m} (${p}): torch ${t}, ref ${r}, |Δ| ${d.toExponential(2)}`); if (!(d <= 2e-5)) process.exit(1);' "$1" "$2" "${v[@]}" ||
    die "compare $1 --preprocess $2: torch and ref differ by more than 2e-5"
done
say "suites passed in $(($(date +%s) - t0)) s with $("$py" -c 'import sys, torch; print("torch", torch.__version__, "/ Python", sys.version.split()[0])')"
