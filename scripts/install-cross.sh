#!/usr/bin/env bash
# Install the aarch64 cross toolchain and user-mode emulator the ARM tests use:
#   aarch64-linux-gnu-gcc (links the kernels built for target="arm") and qemu-aarch64 (runs them).
# Idempotent: does nothing when both are on PATH. Exits non-zero (with the reason on stderr) when they are
# missing and cannot be installed (no apt-get, no root and no sudo, no network): a CI step that fails loudly
# (.ci/run). Tests never run it; without the tools they skip (and fail under CI=true, tests/conftest.py).
set -euo pipefail

if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "install-cross: aarch64-linux-gnu-gcc and qemu-aarch64 already present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-cross: apt-get not found; install qemu-user and gcc-aarch64-linux-gnu by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-cross: not root and no passwordless sudo; install qemu-user and gcc-aarch64-linux-gnu" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null
echo "install-cross: installed aarch64-linux-gnu-gcc and qemu-aarch64"
