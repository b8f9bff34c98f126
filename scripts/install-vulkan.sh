#!/usr/bin/env bash
# Installs what `--features wgpu` needs at run time on Debian / Ubuntu: the Vulkan loader and
# Mesa's Vulkan drivers. On a machine without a GPU, Mesa's lavapipe (llvmpipe) is a real,
# conformant Vulkan driver that runs on the CPU: CI runs the wgpu tests on it. On a machine with
# a GPU, the vendor's driver (or Mesa's RADV / ANV) is picked first.
# Idempotent; needs root (or sudo) and the Debian package registry.
set -euo pipefail
packages=(libvulkan1 mesa-vulkan-drivers)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  }
fi
# The drivers Vulkan's loader will see (one JSON manifest each).
ls /usr/share/vulkan/icd.d/ 2>/dev/null | sed 's/^/vulkan driver: /'
