#!/usr/bin/env bash
# What the emulated-CPU int8 test needs (tests/quantize/test_int8_emulated_cpu.py): Debian's
# qemu-user, to run onnxruntime as on an AVX2 CPU without VNNI. Idempotent and quiet. Called by .ci/run.
set -euo pipefail
if [[ $(uname -m) == x86_64 ]] && ! command -v qemu-x86_64 >/dev/null 2>&1; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "ci_qemu: installing Debian qemu-user" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi
