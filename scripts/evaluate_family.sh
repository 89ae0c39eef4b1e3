#!/usr/bin/env bash
# A reference family (four qualities) as one RD curve on Kodak, and its BD-rates against JPEG, WebP
# and CompressAI's pretrained hyperprior (Akima):
#   scripts/evaluate_family.sh                         ScaleHyperprior(64, 96) -> checkpoints/reference/family.kodak.json,
#                                                      family-rd.{png,pdf}, family-bd.txt (and the FactorizedPriorReLU point)
#   scripts/evaluate_family.sh mbt2018-mean-N64-M96    -> checkpoints/reference/mbt2018-mean-N64-M96-family.kodak.json,
#                                                      ...-family-rd.{png,pdf}, ...-family-bd.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=checkpoints/reference
FAMILY=${1:-bmshj2018-hyperprior-N64-M96}
PREFIX=$([ -z "${1:-}" ] && echo family || echo "$FAMILY-family")
ARGS=()
for q in 2 3 4 5; do ARGS+=(--checkpoint "$OUT/$FAMILY-q$q.pt"); done
"$PY" -m dynaquant_brevitas eval "${ARGS[@]}" --images ../shared/data/kodak -o "$OUT/$PREFIX.kodak.json" \
    --threads 1 --name "$FAMILY reference family (ours)" \
    --description "dynaquant train on ../shared/data/train, lambda 0.0035/0.0067/0.013/0.025; real bitstreams, CPU" \
    2>&1 | grep -v -i -E "warn|^W[0-9]{4} " | tail -1
: > "$OUT/$PREFIX-bd.txt"
for anchor in jpeg webp compressai-bmshj2018-hyperprior_mse_cpu; do
    "$PY" -m dynaquant_brevitas plot "$OUT/$PREFIX.kodak.json" --reference jpeg --reference webp \
        --reference compressai-bmshj2018-hyperprior_mse_cpu --anchor "$anchor" -o "$OUT/$PREFIX" \
        2>&1 | grep -v -i -E "warn|^W[0-9]{4} " | tee -a "$OUT/$PREFIX-bd.txt"
done
if [ -z "${1:-}" ]; then
    # The GDN-free FactorizedPriorReLU (one point): rate difference at equal PSNR against JPEG.
    "$PY" -m dynaquant_brevitas plot "$OUT/bmshj2018-factorized-relu-N64-M96-q4.kodak.json" --reference jpeg \
        --anchor jpeg -o "$OUT/factorized-relu" 2>&1 | grep -v -i -E "warn|^W[0-9]{4} " | tee -a "$OUT/$PREFIX-bd.txt"
fi
