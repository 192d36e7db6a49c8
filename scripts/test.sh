#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU: the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh
bash scripts/setup-cpu.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false
exec "${MATHSYNTH_VENV:-.venv}/bin/python" -m pytest -q -p no:cacheprovider "$@"
