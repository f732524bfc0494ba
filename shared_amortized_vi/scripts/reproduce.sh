#!/usr/bin/env bash
# Reproduce the SAMOVAR tables: SAMOVAR, the VERSA-style Monte-Carlo objective and
# prototypical networks, 5-way 1-shot and 5-shot, each tested on fixed tasks.
#
#   SCALE=smoke (default): Omniglot, Conv-4 at 28 px, CPU. The data come from the official
#                zips, or offline from a mirror folder holding the array copy
#                (REPRO_MIRROR=../shared/data on the project's machines).
#   SCALE=paper: miniImageNet, CIFAR-FS and FC100 with ResNet-12 (GPU; not yet run here).
#   CONFIGS="samovar_1shot protonet_1shot"   configs to run (default: all of the scale)
#   SEEDS="0 1 2"                            training seeds (default: 0)
#
# Each command resumes where it stopped; finished runs are reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-smoke}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0}
case "$SCALE" in
  smoke|paper) ;;
  *) echo "error: SCALE must be smoke or paper, got '$SCALE'" >&2; exit 2 ;;
esac
FOLDER=shared_amortized_vi/configs/$SCALE
if [[ -z "${CONFIGS:-}" ]]; then
  CONFIGS=$(ls "$FOLDER" | grep -v '_base.yaml$' | sed 's/\.yaml$//' | tr '\n' ' ')
fi
for config in $CONFIGS; do
  if [[ "$config" == _* || "$config" == */* || ! -f "$FOLDER/$config.yaml" ]]; then
    echo "error: no config $FOLDER/$config.yaml; available: $(ls "$FOLDER" | grep -v '_base.yaml$' | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
    exit 2
  fi
done
started=$(date +%s)
for seed in $SEEDS; do
  for config in $CONFIGS; do
    echo "== $config (seed $seed)"
    "$PYTHON" -m shared_amortized_vi.train --config "$FOLDER/$config.yaml" --seed "$seed"
  done
done
"$PYTHON" -m shared_amortized_vi.tables --collect
echo "runs took $(( $(date +%s) - started )) s; tables in shared_amortized_vi/README.md"
