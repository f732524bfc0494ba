#!/usr/bin/env bash
# Reproduce the SANE table: decompose, edit with InstructPix2Pix and with SANE, measure.
#
#   SCALE=smoke (default): four scikit-image photos, the embedded SmolLM2-135M for the
#                decomposition, TINY RANDOM editor and metric models, CPU, offline.
#                Checks the pipeline; the numbers are not results.
#   SCALE=paper: EMU-Edit test and MagicBrush dev with timbrooks/instruct-pix2pix on a GPU;
#                needs DECOMPOSE_URL and DECOMPOSE_MODEL (an OpenAI-compatible API,
#                key in $OPENAI_API_KEY). Runtime not yet measured.
#   CONFIGS="emu_edit"   configs of the scale to run (default: all)
#
# Each command resumes: images already edited are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-smoke}
PYTHON=${PYTHON:-python}
case "$SCALE" in
  smoke) DEFAULT_CONFIGS="photos_run"; EXTRA=() ;;
  paper)
    : "${DECOMPOSE_URL:?set DECOMPOSE_URL to an OpenAI-compatible base URL, e.g. https://api.openai.com/v1}"
    : "${DECOMPOSE_MODEL:?set DECOMPOSE_MODEL to the chat model that decomposes instructions}"
    DEFAULT_CONFIGS="emu_edit magicbrush"; EXTRA=(--set "decompose.base_url=$DECOMPOSE_URL" --set "decompose.model=$DECOMPOSE_MODEL") ;;
  *) echo "error: SCALE must be smoke or paper, got '$SCALE'" >&2; exit 2 ;;
esac
started=$(date +%s)
for config in ${CONFIGS:-$DEFAULT_CONFIGS}; do
  path=sane/configs/$SCALE/$config.yaml
  if [[ ! -f "$path" ]]; then echo "error: no config $path" >&2; exit 2; fi
  echo "== $config"
  "$PYTHON" -m sane.run --config "$path" "${EXTRA[@]}"
done
"$PYTHON" -m sane.tables --collect
echo "runs took $(( $(date +%s) - started )) s; table in sane/README.md, contact sheets in runs/sane/$SCALE/<run>/sheets/"
