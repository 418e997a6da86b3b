#!/usr/bin/env bash
# Guards the gRPC contract: buf lint, buf format, buf breaking, and committed Python stubs that
# match the protos. Exit 0 when all hold; otherwise 1 with a message saying what to run.
#
#   BUF                   buf binary (default .venv/bin/buf)
#   PYTHON                Python with grpcio-tools (default .venv/bin/python, via gen_protos.sh)
#   BUF_BREAKING_AGAINST  buf input to compare against, e.g. '.git#branch=main'. Default: HEAD,
#                         when HEAD has protos; set to "none" to skip the breaking check.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=${BUF:-.venv/bin/buf}
GENERATED=(
  clients/python/llamafleet/common
  clients/python/llamafleet/data
  clients/python/llamafleet/training
  clients/python/llamafleet/reward
  clients/python/llamafleet/rollout
)

fail() {
  echo "check_protos: $*" >&2
  exit 1
}

"$BUF" lint || fail "buf lint found problems (see above)"
"$BUF" format -d --exit-code protos || fail "protos are not buf-formatted: run '$BUF format -w protos'"

against=${BUF_BREAKING_AGAINST:-}
if [ -z "$against" ] && git rev-parse --verify -q 'HEAD:protos' >/dev/null 2>&1; then
  against='.git#ref=HEAD'
fi
if [ -n "$against" ] && [ "$against" != none ]; then
  "$BUF" breaking --against "$against" || fail "breaking change against $against (rules: FILE)"
fi

bash scripts/gen_protos.sh

git diff --exit-code --stat -- "${GENERATED[@]}" >&2 ||
  fail "generated stubs differ from the committed ones: run scripts/gen_protos.sh and commit"
untracked=$(git status --porcelain --untracked-files=all -- "${GENERATED[@]}" | grep '^??' || true)
if [ -n "$untracked" ]; then
  echo "$untracked" >&2
  fail "generated stubs are not committed: run scripts/gen_protos.sh and commit them"
fi
echo "check_protos: ok"
