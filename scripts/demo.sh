#!/usr/bin/env bash
# The main job on a fresh machine: install (scripts/setup.sh), build a tiny Llama model with its
# own tokenizer and give it a short pre-training (the base), start the local cluster once (a
# private redis-server, the four services, two rollout workers and one reward worker) and run the
# LoRA-only pipeline through it with no restart, each stage from the SFT adapter as LLaMA-Factory
# chains them: a LoRA SFT job on a task the model cannot do (held-out accuracy through the
# rollout service before and after); a reward model from the SFT adapter, scored through the
# reward service; DPO from the SFT adapter (reference = base + that adapter: loss log 2 at the
# start), its fetched adapter compared with the SFT one on held-out pairs; PPO from the SFT
# adapter (KL 0 at the first step) rewarded by the reward model across the fleets (mean reward per
# step and queue counts printed). Then GRPO on sums "What is n + 1?" that a full SFT on the other
# half of them never showed: GRPO's base is that full SFT model (exported as sums-model), which
# `llamafleet add-base` serves beside the first base in the same cluster (its own rollout and
# reward workers and queues; nothing restarts), answers checked by the reward service's
# exact_match rule, accuracy before/after. Takes several minutes on 2 cores.
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
echo "== the base: a short full pre-training of the tiny model (pt recipe, before any service)"
python scripts/demo.py base "$RUN_DIR"
echo "== llamafleet up: one cluster for the whole pipeline (two rollout workers, one reward worker)"
llamafleet up --base-model "$(cat "$RUN_DIR/demo/pretrained_model")" --rollout-workers 2 --reward-workers 1
echo "== SFT job (sft, LoRA) and held-out accuracy through the rollout service"
python scripts/demo.py sft "$RUN_DIR"
llamafleet plot demo-sft -o "$RUN_DIR/demo/sft-loss.png"
echo "== reward model job (rm) from the SFT adapter; held-out pairs scored by the reward service"
python scripts/demo.py rm "$RUN_DIR"
echo "== DPO job (dpo) from the SFT adapter; reference = base + that adapter"
python scripts/demo.py dpo "$RUN_DIR"
echo "== PPO job (ppo) from the SFT adapter, rewarded by the reward model through the fleets"
python scripts/demo.py ppo "$RUN_DIR"
echo "== SFT job (sft, full) on half of the sums n + 1, from the pre-trained base"
python scripts/demo.py sft-arith "$RUN_DIR"
echo "== llamafleet add-base: that model as a second base of the same cluster (no restart)"
llamafleet add-base "$(cat "$RUN_DIR/demo/arith_model")" --rollout-workers 2 --reward-workers 1
echo "== GRPO job (grpo, LoRA over the sums model, groups of 8, rule reward) on its workers"
python scripts/demo.py grpo "$RUN_DIR"
echo "== llamafleet status"
llamafleet status
