#!/usr/bin/env bash
# Every check and figure that needs a CUDA device, in one run, written to one folder:
#   - the tests marked `gpu` (batched math, estimators, capture, AMP fine-tuning on CUDA);
#   - the profile benchmark on CUDA against WeightWatcher (CPU) in the same run (issue 3);
#   - the empirical-profile benchmark on CUDA (issue 4's "under 2x on GPU" target);
#   - the entropy-loss step overhead on CUDA (issue 7);
#   - a torchrun fine-tuning run with the NCCL backend and bf16 autocast, one process per GPU.
#
# Usage, from the repository root, in the environment of README command 2 plus weightwatcher:
#   bash tests/bench/gpu_figures.sh OUTDIR
set -euo pipefail

out=$(realpath -m "${1:-gpu_figures}")
python - <<'EOF' || { echo "gpu_figures.sh: no CUDA device visible to torch; nothing run" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
mkdir -p "$out"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
python -c "import torch; print(torch.cuda.get_device_name(0), torch.version.cuda)" > "$out/device.txt"

python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.txt"

cd tests/bench
python bench_profile.py --device cuda --out "$out/bench_profile_cuda.json" | tee "$out/bench_profile_cuda.txt"
python bench_empirical.py --device cuda --out "$out/bench_empirical_cuda.json" | tee "$out/bench_empirical_cuda.txt"
python bench_loss_overhead.py --device cuda --out "$out/bench_loss_overhead_cuda.json" | tee "$out/bench_loss_overhead_cuda.txt"
cd ../..

torchrun --standalone --nproc_per_node="$gpus" -m entropy_probe finetune --task classify \
    --data digits --epochs 2 --device cuda --amp bf16 --out "$out/ddp_nccl_bf16" \
    2>&1 | tee "$out/ddp_nccl_bf16.txt"
echo "gpu_figures.sh: everything is in $out"
