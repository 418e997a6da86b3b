#!/usr/bin/env bash
# The tests marked heavy, which scripts/test.sh (and so CI's 45-minute run) leaves out: every
# architecture x recipe x method cell beyond the default subset (tests/training/test_arch_matrix.py),
# real vLLM on every model family (tests/rollout/test_vllm_families.py) and the Redis Sentinel
# failover drill (tests/reliability/test_sentinel_failover.py), and a PPO job on the vLLM engine
# (tests/rollout/test_vllm_ppo.py). About 8 minutes on a quiet 2-core box (6 Dec 2026), 20-40 under load.
# Installs what is missing first, like scripts/test.sh. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/setup_vllm.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest -q -p no:cacheprovider --durations=25 -m heavy "$@"
