#!/usr/bin/env bash
# The main job on a fresh machine: install (scripts/setup.sh), start the local cluster (a
# private redis-server and the four services), build a tiny Llama model with its own tokenizer,
# show that transformers loads it and that every service is healthy, then stop the cluster.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
RUN_DIR=${LLAMAFLEET_RUN_DIR:-.llamafleet}
export LLAMAFLEET_RUN_DIR="$RUN_DIR"

llamafleet down >/dev/null 2>&1 || true
trap 'llamafleet down || true' EXIT

echo "== llamafleet up"
llamafleet up
echo "== llamafleet tiny-model $RUN_DIR/tiny-model"
llamafleet tiny-model "$RUN_DIR/tiny-model" --size tiny --force
python - "$RUN_DIR/tiny-model" <<'PY'
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
n = sum(p.numel() for p in model.parameters())
msgs = [{"role": "user", "content": "What is 2 + 3?"}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(f"loaded {path}: {model.config.model_type}, {n / 1e6:.2f}M parameters, vocab {len(tok)}")
print("chat prompt:", repr(tok.decode(ids["input_ids"][0])))
print("untrained model says:", repr(tok.decode(out[0, ids["input_ids"].shape[1]:])))
PY
echo "== llamafleet status"
llamafleet status
echo "== llamafleet down"
