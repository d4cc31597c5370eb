#!/usr/bin/env bash
# Every check and figure that needs a CUDA device, in one run, written to one folder:
#   - the tests marked `gpu` (batched math, estimators, capture, AMP fine-tuning on CUDA);
#   - the profile benchmark on CUDA against WeightWatcher (CPU) in the same run (issue 3),
#     at random init and with trained-like BatchNorms;
#   - the empirical-profile benchmark on CUDA (issue 4's "under 2x on GPU" target);
#   - the entropy-loss step overhead on CUDA (issue 7);
#   - a torchrun fine-tuning run with the NCCL backend and bf16 autocast, one process per GPU.
# Each step runs under its own time limit and the script goes on past a failing step; the
# steps' exit codes are in OUTDIR/steps.txt, and the script fails if any step failed.
# The whole default test suite on a CUDA machine (where `--device auto` means CUDA) is
# `python -m pytest`, run separately: see README, "GPU".
#
# Usage, from the repository root, in the environment of README command 2 plus weightwatcher:
#   bash tests/bench/gpu_figures.sh OUTDIR
set -uo pipefail

out=$(realpath -m "${1:-gpu_figures}")
python - <<'EOF' || { echo "gpu_figures.sh: no CUDA device visible to torch; nothing run" >&2; exit 2; }
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
mkdir -p "$out"
: > "$out/steps.txt"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
python -c "import torch; print(torch.cuda.get_device_name(0), 'cuda', torch.version.cuda, 'torch', torch.__version__)" > "$out/device.txt"
failed=0

# step NAME SECONDS COMMAND...: runs COMMAND (in tests/bench for bench_*), output to NAME.txt
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
    [ "$rc" -eq 0 ] || failed=1
}

step pytest_gpu 150 python -m pytest -m gpu -q -p no:cacheprovider
cd tests/bench
step bench_profile_cuda 240 python bench_profile.py --device cuda --out "$out/bench_profile_cuda.json"
step bench_profile_cuda_bn 90 python bench_profile.py --device cuda --models resnet50 \
    --no-spectral --bn-like-trained --repeat 5 --out "$out/bench_profile_cuda_bn.json"
step bench_empirical_cuda 120 python bench_empirical.py --device cuda --repeat 3 \
    --out "$out/bench_empirical_cuda.json"
step bench_loss_overhead_cuda 150 python bench_loss_overhead.py --device cuda \
    --out "$out/bench_loss_overhead_cuda.json"
cd ../..
step ddp_nccl_bf16 120 torchrun --standalone --nproc_per_node="$gpus" -m entropy_probe finetune \
    --task classify --data digits --epochs 2 --device cuda --amp bf16 --out "$out/ddp_nccl_bf16"

echo "gpu_figures.sh: everything is in $out"
exit "$failed"
