#!/usr/bin/env bash
# One GPU session's checks, run on a lent machine from the repository root:
#   training throughput at the 124M GPT-2 shape in bf16 (ours vs litgpt, MFU vs the card's
#   measured bf16 matmul peak) and the Mamba scan on CUDA (fused kernels when mamba-ssm is
#   importable). Baseline wheels travel in .whl/ (see README "Benchmarks").
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch; print('torch', torch.__version__)"
timeout 240 python3 bench/train_throughput.py --device cuda --shape gpt2 --rounds 3 --steps 10 \
  2>&1 | tee "$OUT/train_gpu.log"
python3 -c "import mamba_ssm" 2>/dev/null && echo "mamba_ssm importable" || echo "mamba_ssm not importable"
timeout 200 python3 bench/gpu_mamba.py 2>&1 | tee "$OUT/mamba_gpu.log"
