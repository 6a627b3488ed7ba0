#!/usr/bin/env bash
# The LM experiment at a larger size, for a machine with an accelerator (one GPU). Not run yet:
# its device time (the aim: <= 8 minutes) is unmeasured.
# It needs a JAX build for the accelerator (e.g. `pip install "jax[cuda12]"`); everything else is
# the same offline pipeline (stdlib source, reference manual, nothing downloaded).
#
#   bash benchmarks/lm/run_large.sh [extra flags, e.g. --seeds 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
python benchmarks/lm_finetune.py \
  --out runs/lm_finetune_large --json runs/lm_finetune_large/lm_finetune_large.json \
  --d-model 512 --layers 8 --heads 8 --vocab-size 16384 --seq-len 128 \
  --pretrain-chars 6000000 --adapt-test-chars 2200000 --pretrain-steps 4000 --batch-size 32 --pretrain-lr 1e-3 \
  --adapt-train-chars 400000 --finetune-steps 100 --finetune-lr 1e-4 \
  --max-prompts 2000 --no-progress "$@"
