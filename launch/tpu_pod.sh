#!/bin/bash
# Training on a Cloud TPU VM slice: create it, install projectable on every worker, run.
#
#   TPU_NAME=proj-v5e-64 ZONE=us-west4-a ACCELERATOR=v5litepod-64 PROJECT=my-gcp-project \
#   WORKDIR=gs://my-bucket/runs/fm CONFIG=configs/fashion_mnist.py:full \
#     bash launch/tpu_pod.sh [--config.a.b=v ...]
#
# Set: TPU_NAME, ZONE, ACCELERATOR (slice type), PROJECT, WORKDIR (a gs:// path every worker
# can write: Orbax checkpoints collectively), CONFIG; optional RUNTIME (TPU software version),
# REPO (git URL of this repository). Each worker joins jax.distributed through the TPU
# metadata (auto-detected), reads its own data slice and trains one mesh over all chips.
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}" "${ACCELERATOR:?}" "${PROJECT:?}" "${WORKDIR:?}" "${CONFIG:?}"
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
REPO=${REPO:-$(git config --get remote.origin.url)}
gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" >/dev/null 2>&1 \
  || gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
       --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
on_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all \
    --command="$1"
}
on_all "test -d projectable || git clone $REPO projectable; cd projectable && git pull -q \
  && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
ARGS=$(printf ' %q' "$@")
on_all "cd projectable && .venv/bin/python launch/train.py --config=$CONFIG --workdir=$WORKDIR \
  --config.mesh=data:-1,model:1 --require_platform=tpu$ARGS"
