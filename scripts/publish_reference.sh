#!/usr/bin/env bash
# Publish a reference training run: weights-only checkpoint, resume state, Kodak evaluation, checksums.
#   scripts/publish_reference.sh bmshj2018-hyperprior-N64-M96-q4 "lambda=0.013"
# Reads runs/reference/NAME/last.pt (a running job keeps training); writes checkpoints/reference/NAME.pt,
# NAME.kodak.json (real bitstreams, per image) and, while the run is not finished, its resume state
# checkpoints/resume/NAME.pt.
set -euo pipefail
NAME=$1
LABEL=${2:-}
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p checkpoints/reference checkpoints/resume runs
cp "runs/reference/$NAME/last.pt" "runs/$NAME.snapshot.pt"
STEP=$("$PY" - "$NAME" <<'PY' 2>/dev/null
import sys
from dynaquant_brevitas.io.checkpoint import load_checkpoint, save_atomic, weights_only
name = sys.argv[1]
ck = load_checkpoint(f"runs/{name}.snapshot.pt")
save_atomic(weights_only(ck), f"checkpoints/reference/{name}.pt")
if ck["step"] < ck["train_config"]["train"]["steps"]:
    save_atomic(ck, f"checkpoints/resume/{name}.pt")
print(ck["step"])
PY
)
echo "$NAME: step $STEP"
"$PY" -m dynaquant_brevitas eval --checkpoint "checkpoints/reference/$NAME.pt" --images ../shared/data/kodak \
    -o "checkpoints/reference/$NAME.kodak.json" --per-image --threads 1 \
    --name "$NAME $LABEL, $STEP steps" \
    --description "dynaquant train on ../shared/data/train, $STEP steps of batch 8x128px; real bitstreams, CPU" \
    2>&1 | grep -v -i -E "warn|^W[0-9]{4} " | tail -2
(cd checkpoints/reference && sha256sum -- *.pt *.kodak.json > SHA256SUMS)
(cd checkpoints/resume && if ls -- *.pt >/dev/null 2>&1; then sha256sum -- *.pt > SHA256SUMS; else rm -f SHA256SUMS; fi)
