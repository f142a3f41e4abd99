#!/usr/bin/env bash
# `make gpu-check`: the GPU paths on one CUDA device, with the figures they print. Not part of `make test`
# (CI has no GPU); run it on a machine with an NVIDIA GPU after `make install`.
#   1. the tiny pipeline (fp -> ap, policy_pretrain, policy, eval) on one Ray Train GPU worker: NCCL process
#      group, bf16 autocast, one epoch per stage;
#   2. `videoiq bench train` on CUDA (each stage's step, bare and on a Ray Train worker, bf16);
#   3. `videoiq bench infer` on CUDA (float engine: the int8 engine's kernels are CPU ones);
#   4. `videoiq infer` of the pipeline's policy over its validation split, one model actor on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VIDEOIQ_BIN:-$PWD/.venv/bin}"  # the environment with videoiq installed
OUT="${GPU_CHECK_OUT:-$PWD/gpu_check_out}"
export RAY_USAGE_STATS_ENABLED=0
export WANDB_MODE="${WANDB_MODE:-offline}"

if ! "$BIN/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU" >&2
    exit 2
fi
"$BIN/python" -c 'import torch; print("gpu-check:", torch.cuda.get_device_name(), "| torch", torch.__version__,
                                      "| CUDA", torch.version.cuda, "| bf16", torch.cuda.is_bf16_supported())'
rm -rf "$OUT"

echo "==> 1/4 the tiny pipeline on one GPU worker (nccl, bf16 autocast, one epoch per stage)"
"$BIN/videoiq" data synth "$OUT/data" --source frames --train-per-class 4 --val-per-class 2
D=launch/configs/demo
"$BIN/python" launch/pipeline.py --fp $D/fp.yaml --ap $D/ap.yaml --policy-pretrain $D/policy_pretrain.yaml \
    --policy $D/policy.yaml --eval $D/eval.yaml --set "data.root=$OUT/data" "run.storage_path=$OUT/runs" \
    ray.num_workers=1 run.use_gpu=true speed.amp=bf16 optim.epochs=1

echo "==> 2/4 videoiq bench train on CUDA (bf16)"
"$BIN/videoiq" bench train --device cuda --amp bf16 --ray-workers 1

echo "==> 3/4 videoiq bench infer on CUDA (ResNet-50, 224x224, 8 frames, batch 8)"
"$BIN/videoiq" bench infer --device cuda --size 224 --frames 8 --batch 8 --mixes 32 4 2 even skip50

echo "==> 4/4 videoiq infer on the GPU (one model actor with a GPU, decoding on the CPUs)"
"$BIN/videoiq" infer "$OUT/runs/policy" --input "$OUT/data/val.lmdb" --out "$OUT/infer" --device cuda

echo "==> gpu-check done: the figures are above; the pipeline's runs are in $OUT/runs"
