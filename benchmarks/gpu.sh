#!/usr/bin/env bash
# The speed benchmarks of benchmarks/ at the real sizes (SAM ViT-B + CLIP ViT-L/14@336) on one CUDA GPU, printing
# each table: bf16 where a script has the option (bench_sam_decoder, bench_frozen and bench_caption run float32).
# Random weights throughout (speed does not depend on them): nothing is downloaded. About 5 minutes on an H100/H200.
#
#     bash benchmarks/gpu.sh                      # PEAK_TFLOPS (dense bf16, for MFU) is 989, an H100/H200 SXM's
#     PEAK_TFLOPS=312 PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # an A100
#
# Left out: demo_learning, demo_top1, caption_prefix and vqa_projector measure what the tiny demo learns, not speed,
# and need a finished demo run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "benchmarks/gpu.sh: no CUDA device (torch.cuda.is_available() is False); run it on a machine with a GPU" >&2
    exit 1
fi
"$PYTHON" -c "import torch; print('#', torch.cuda.get_device_name(), 'torch', torch.__version__)"

REAL=(--config regionspot_bl336 --random-weights)
BF16=(--device cuda --dtype bfloat16 --peak-tflops "$PEAK_TFLOPS")
run() {
    echo
    echo "\$ $PYTHON $*"
    "$PYTHON" "$@"
}
run benchmarks/bench_predictor.py "${REAL[@]}" "${BF16[@]}" --repeats 5
run benchmarks/bench_predictor.py "${REAL[@]}" "${BF16[@]}" --repeats 5 --tokens-only --classes 1203
run benchmarks/bench_predictor.py "${REAL[@]}" "${BF16[@]}" --repeats 5 --tokens-only --classes 1203 --boxes 100 --compile
run benchmarks/bench_overhead.py "${REAL[@]}" "${BF16[@]}" --repeats 5
run benchmarks/bench_overhead.py "${REAL[@]}" "${BF16[@]}" --repeats 5 --tokens-only
run benchmarks/bench_sam_decoder.py --variant vit_b --device cuda
run benchmarks/bench_frozen.py --variant vit_b --device cuda --images 16 --boxes 50
run benchmarks/bench_caption.py --config regionspot_bl336 --decoder tap --device cuda
run benchmarks/bench_training_cache.py "${REAL[@]}" --accelerator gpu --precision bf16-mixed \
    --images 32 --batch-size 8 --warmup 2 --steps 10 --image-size 480 640
# The data loader on this machine's cores: how many workers keep the GPU above fed at the batch's images/s.
run benchmarks/bench_data_loading.py --workers 0 4 8 16 --batches 16
# ONNX (benchmarks/bench_onnx.py): onnxruntime's CUDA provider against torch eager on the GPU, float32 both, at the
# real sizes. Needs onnxruntime-gpu in place of onnxruntime (pip install -c constraints.txt onnxruntime-gpu).
if "$PYTHON" -c "import sys, onnxruntime; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())"; then
    run benchmarks/bench_onnx.py "${REAL[@]}" --device cuda --providers CUDAExecutionProvider CPUExecutionProvider \
        --repeats 5 --threads 8
    # tokens only (the shared first block): the repeated-query target, 10x at 100 regions, is a GPU one
    run benchmarks/bench_onnx.py "${REAL[@]}" --device cuda --providers CUDAExecutionProvider CPUExecutionProvider \
        --repeats 5 --threads 8 --tokens-only --regions 1 10 100 300
    run benchmarks/bench_serve.py "${REAL[@]}" --providers CUDAExecutionProvider CPUExecutionProvider \
        --clients 1 4 16 --requests 64 --regions 100 --threads 8
else
    echo "# skipped bench_onnx.py on the GPU: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
fi
