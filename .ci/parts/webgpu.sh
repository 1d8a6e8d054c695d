#!/usr/bin/env bash
# WebGPU engine tests without a GPU: onnxruntime-node's WebGPU EP (Dawn) needs a Vulkan driver. Debian bookworm's
# stock Mesa 22.3 lavapipe gives Dawn no adapter (a required feature is missing); Mesa 25 from bookworm-backports
# works. .ci/run installs *.apt lists before this script, so the backports packages are installed here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" != bookworm ]; then
  # Newer Debian releases ship Mesa ≥ 25 themselves (.apt list); the tests fail under CI=true if Dawn finds no adapter.
  echo "webgpu part: $codename, stock $(dpkg-query -W -f='mesa-vulkan-drivers ${Version}' mesa-vulkan-drivers 2>/dev/null || echo 'mesa-vulkan-drivers missing')"
  exit 0
fi
sources=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if ! { [ -n "$sources" ] && grep -qs 'bookworm-backports' $sources; }; then
  # Reuse the machine's existing Debian mirror (it may be a local mirror): the first active `deb URL` or `URIs: URL`
  # line that is not the security archive.
  mirror=$( { [ -n "$sources" ] && grep -hE '^(deb|URIs:)[[:space:]]' $sources; } | grep -oE 'https?://[^ ]+' \
    | grep -v -- '-security' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb ${mirror%/} bookworm-backports main" > /etc/apt/sources.list.d/viral-lens-backports.list
  apt-get update -qq
fi
# mesa-vulkan-drivers carries lavapipe (lvp, a CPU Vulkan driver); libvulkan1 is the loader Dawn dlopens.
apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "webgpu part: $(dpkg-query -W -f='mesa-vulkan-drivers ${Version}' mesa-vulkan-drivers)"
