#!/usr/bin/env bash
# The checks that need a GPU, as one script for a short loan of one (each step time-boxed; the log
# is written to $OUT/cuda.log when OUT is set, else to ./cuda.log):
#   1. batched plans equal unbatched plans on CUDA (tests/test_batching.py, TF32 off, 1e-5);
#   2. the default job on the GPU (wall time, accuracies);
#   3. a one-process NCCL group with train.sync_bn (torch's SyncBatchNorm) trains to the end;
#   4. benchmarks/ddp.py: the distributed strategy against one plain process (NCCL ratio);
#   5. benchmarks/batching.py xml4: fused calls against per-network calls on the GPU;
#   6. bf16 autocast and train.compile on CUDA train to the end.
# Needs torch with CUDA and the project's dependencies importable (PYTHONPATH may point at wheels).
#     bash benchmarks/cuda_checks.sh
#     ONLY='NCCL|compile' bash benchmarks/cuda_checks.sh    # the steps whose names match (a rerun)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-.}/cuda.log"
py=${PYTHON:-python3}
step() {
    local name=$1 started=$SECONDS
    shift
    [[ -z "${ONLY:-}" || "$name" =~ $ONLY ]] || return 0
    echo "=== $name" | tee -a "$log"
    timeout "$@" 2>&1 | tee -a "$log"
    echo "--- $name: exit ${PIPESTATUS[0]}, $((SECONDS - started)) s" | tee -a "$log"
}

step "environment" 30 $py -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())"
step "batched = unbatched on CUDA" 150 env KTGRAPH_TEST_DEVICE=cuda $py -m pytest -q -p no:cacheprovider \
    tests/test_batching.py -k "bundled or cohort or xml_with_four or each_link"
step "default job on the GPU" 120 $py -m ktgraph run graphs/multi_xross.yaml train.device=cuda --out /tmp/ck/mx \
    --no-progress
step "one-process NCCL group, sync_bn" 90 torchrun --standalone --nproc_per_node=1 -m ktgraph run graphs/xml.yaml \
    train.device=cuda train.sync_bn=true train.epochs=2 --out /tmp/ck/nccl --no-progress
step "strategy ratio, NCCL" 90 $py benchmarks/ddp.py --device cuda --graph graphs/xml.yaml --epochs 2 --rounds 2
step "batching on the GPU, xml4" 90 $py benchmarks/batching.py --case xml4 --steps 15 --device cuda
step "batching on the GPU, xml4, TF32 off" 60 env NVIDIA_TF32_OVERRIDE=0 $py benchmarks/batching.py --case xml4 \
    --steps 5 --device cuda
step "bf16 autocast" 60 $py -m ktgraph run graphs/dml.yaml train.device=cuda train.amp=bf16 train.epochs=2 \
    --out /tmp/ck/bf16 --no-progress
step "train.compile" 120 $py -m ktgraph run graphs/dml.yaml train.device=cuda train.compile=true train.epochs=2 \
    --out /tmp/ck/compile --no-progress
