#!/usr/bin/env bash
# The main job on a fresh machine: install (scripts/setup.sh), build a tiny Llama model with its
# own tokenizer, start the local cluster (a private redis-server and the four services), and
# run the demo pipeline through the services: a short full pre-training job, then a LoRA SFT job
# on a task the model cannot do, with held-out accuracy measured through the rollout service
# before and after; then a LoRA reward model on preference pairs of the same task, scored through
# the reward service, and a LoRA DPO job, its fetched adapter compared with the base on held-out
# pairs; finally a short SFT makes the base answer "yes" or "no" at random, and a short PPO run
# across two rollout workers and one reward worker rewards "yes" (mean reward per step and queue
# counts printed); then GRPO on sums "What is n + 1?" that a full SFT on the other half of them
# never showed, answers checked by the reward service's exact_match rule, accuracy before/after. Takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN_DIR=${LLAMAFLEET_RUN_DIR:-.llamafleet}
export LLAMAFLEET_RUN_DIR="$RUN_DIR"

llamafleet down >/dev/null 2>&1 || true
rm -rf "$RUN_DIR"
trap 'llamafleet down >/dev/null 2>&1 || true' EXIT

echo "== llamafleet tiny-model $RUN_DIR/tiny-model"
llamafleet tiny-model "$RUN_DIR/tiny-model" --size tiny --force
echo "== llamafleet up (base: the random-initialised tiny model)"
llamafleet up --base-model "$RUN_DIR/tiny-model"
echo "== pre-training job (pt, full)"
python scripts/demo.py pretrain "$RUN_DIR"
echo "== restart with the pre-trained model as the served base"
llamafleet down
llamafleet up --base-model "$(cat "$RUN_DIR/demo/pretrained_model")"
echo "== SFT job (sft, LoRA) and held-out accuracy through the rollout service"
python scripts/demo.py sft "$RUN_DIR"
llamafleet plot demo-sft -o "$RUN_DIR/demo/sft-loss.png"
echo "== reward model job (rm, LoRA) and held-out pairwise accuracy through the reward service"
python scripts/demo.py rm "$RUN_DIR"
echo "== DPO job (dpo, LoRA) and held-out pairwise accuracy of the fetched adapter"
python scripts/demo.py dpo "$RUN_DIR"
echo "== SFT job (sft, full): questions answered \"yes\" or \"no\" at random"
python scripts/demo.py sft-yes-no "$RUN_DIR"
echo "== restart with that model as the base, two rollout workers and one reward worker"
llamafleet down
llamafleet up --base-model "$(cat "$RUN_DIR/demo/yes_no_model")" --rollout-workers 2 --reward-workers 1
echo "== PPO job (ppo, LoRA policy): rollouts and rewards from the fleets through Redis"
python scripts/demo.py ppo "$RUN_DIR"
echo "== SFT job (sft, full) on half of the sums n + 1, from the pre-trained base"
llamafleet down
llamafleet up --base-model "$(cat "$RUN_DIR/demo/pretrained_model")"
python scripts/demo.py sft-arith "$RUN_DIR"
echo "== restart with that model as the base; GRPO job (grpo, LoRA, groups of 8, rule reward)"
llamafleet down
llamafleet up --base-model "$(cat "$RUN_DIR/demo/arith_model")" --rollout-workers 2 --reward-workers 1
python scripts/demo.py grpo "$RUN_DIR"
echo "== llamafleet status"
llamafleet status
