#!/usr/bin/env bash
# Run every benchmark once, printing each script's ratio table (the README's figures).
#   bash benchmarks/run_all.sh                                # CPU (and CUDA where present)
#   ACCELERATOR=gpu TRAIN_BACKBONE=resnet12 bash benchmarks/run_all.sh   # the GPU rows
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
$PY benchmarks/fam_overhead.py --backbone conv4
$PY benchmarks/fam_overhead.py --backbone resnet12 --repeats 5
$PY benchmarks/callback_overhead.py --accelerator "${ACCELERATOR:-cpu}"
$PY benchmarks/train_step.py --backbone "${TRAIN_BACKBONE:-conv4}" --steps 20
$PY benchmarks/data_throughput.py --backbone "${TRAIN_BACKBONE:-conv4}" --steps 20
$PY benchmarks/knn.py
$PY benchmarks/retrieval_eval.py
