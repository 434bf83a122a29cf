#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU and no network: GPU facts, the vLLM settings
# rendered for this machine, verify's host checks and what CUDA sees under them. Installs
# nothing, changes nothing; needs only python3 (standard library) and this checkout.
# Run from anywhere: tests/gpu/run.sh [--json]. Exit status 0 when every check passes.
# NVIDIA_SMI=path uses another nvidia-smi (tests/fixtures/gpu/nvidia-smi, where there is no GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 -m tests.gpu.check "$@"
