#!/usr/bin/env bash
# Train (or continue) one reference family: quality 4 first, then 2, 3 and 5 fine-tuned from it, each
# published with scripts/publish_reference.sh (weights, Kodak evaluation, checksums).
#   scripts/train_family.sh mbt2018-mean-N64-M96
#   scripts/train_family.sh cheng2020-anchor-checkerboard-N64
# Safe to rerun after an interruption: a finished quality is skipped, an unfinished one resumes from
# runs/reference/NAME/last.pt, or from checkpoints/resume/NAME.pt (committed by an earlier session).
set -euo pipefail
FAMILY=$1
cd "$(dirname "$0")/.."
DQ=${DYNAQUANT:-.venv/bin/dynaquant}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
lambda_of() { sed -n 's/^  lmbda: //p' "configs/reference/$1.yaml"; }
for q in 4 2 3 5; do
    NAME="$FAMILY-q$q"
    CONFIG="configs/reference/$NAME.yaml"
    RUN="runs/reference/$NAME"
    if [ -f "$RUN/final.pt" ] || { [ -f "checkpoints/reference/$NAME.pt" ] && [ ! -f "checkpoints/resume/$NAME.pt" ]; }; then
        echo "$NAME: done"
    else
        RESUME=()
        if [ -f "$RUN/last.pt" ]; then RESUME=(--resume)
        elif [ -f "checkpoints/resume/$NAME.pt" ]; then RESUME=(--resume "checkpoints/resume/$NAME.pt"); fi
        echo "$NAME: training ${RESUME[*]:-from the start}"
        "$DQ" train -c "$CONFIG" "${RESUME[@]}" --no-progress
    fi
    if [ -f "$RUN/final.pt" ] && [ "$RUN/final.pt" -nt "checkpoints/reference/$NAME.kodak.json" ]; then
        scripts/publish_reference.sh "$NAME" "lambda=$(lambda_of "$NAME")"
        rm -f "checkpoints/resume/$NAME.pt"
        (cd checkpoints/resume 2>/dev/null && { ls -- *.pt >/dev/null 2>&1 && sha256sum -- *.pt > SHA256SUMS || rm -f SHA256SUMS; }) || true
    fi
done
