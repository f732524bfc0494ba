#!/usr/bin/env bash
# Reproduce the How I Met Your Bias tables: train each model, run its sampler sweep, rebuild the README.
#
#   SCALE=smoke (default): 2-class Biased MNIST at rho_dataset 0.9 on the embedded
#                digits, a small UNet, CPU. Checks the pipeline; not the paper's numbers.
#   SCALE=paper: the released recipe's model sizes on full MNIST (downloaded, or
#                read from $REPRO_MIRROR), for GPUs; runtime not yet measured.
#   CONFIGS="biased_mnist_rho0.99 multicolor_mnist"   configs to run (default: all of the
#                scale except bffhq, which needs BFFHQ_ROOT or a checksum)
#   BFFHQ_ROOT=/data/bffhq   add the BFFHQ config with this extracted copy
#   SEEDS="0 1"        seeds (each has its own run folder; tables pool them)
#   NPROC=4            processes per node for torchrun (paper scale on several GPUs)
#
# Each command resumes where it stopped: training from its checkpoint, the
# sweep from the first setting without a record.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCALE=${SCALE:-smoke}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
SEEDS=${SEEDS:-0}
case "$SCALE" in
  smoke) DEFAULT_CONFIGS="biased_mnist_2class_rho0.9 biased_mnist_2class_rho0.9_epsilon" ;;
  paper) DEFAULT_CONFIGS="biased_mnist_2class_rho0.9 biased_mnist_2class_rho0.9_T500 biased_mnist_rho0.3 biased_mnist_rho0.9 biased_mnist_rho0.95 biased_mnist_rho0.99 biased_mnist_rho0.999 multicolor_mnist" ;;
  *) echo "error: SCALE must be smoke or paper, got '$SCALE'" >&2; exit 2 ;;
esac
CONFIG_DIR=how_i_met_your_bias/configs/$SCALE
CONFIGS=${CONFIGS:-$DEFAULT_CONFIGS}
EXTRA_ARGS=()
if [[ -n "${BFFHQ_ROOT:-}" ]]; then
  CONFIGS="$CONFIGS bffhq"
  EXTRA_ARGS=(--set "data.root=$BFFHQ_ROOT")
fi
for config in $CONFIGS; do
  if [[ ! -f "$CONFIG_DIR/$config.yaml" ]]; then
    echo "error: no config $CONFIG_DIR/$config.yaml; available: $(ls "$CONFIG_DIR" | grep -v '^_' | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
    exit 2
  fi
done

started=$(date +%s)
for seed in $SEEDS; do
  for config in $CONFIGS; do
    echo "== $config (seed $seed)"
    args=(--config "$CONFIG_DIR/$config.yaml" --seed "$seed")
    if [[ "$config" == bffhq ]]; then args+=("${EXTRA_ARGS[@]}"); fi
    if [[ "$NPROC" -gt 1 ]]; then
      "$(dirname "$PYTHON")/torchrun" --standalone --nproc_per_node="$NPROC" -m how_i_met_your_bias.train "${args[@]}"
    else
      "$PYTHON" -m how_i_met_your_bias.train "${args[@]}"
    fi
  done
done
"$PYTHON" -m how_i_met_your_bias.tables --collect
echo "runs took $(( $(date +%s) - started )) s; tables in how_i_met_your_bias/README.md, figures in how_i_met_your_bias/figures/"
