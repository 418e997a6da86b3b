#!/usr/bin/env bash
# Regenerates the Python gRPC stubs of the llamafleet contract from protos/ into
# clients/python/llamafleet/<domain>/v1/ (import as `from llamafleet.data.v1 import data_pb2`).
# The output is committed and never edited by hand; scripts/check_protos.sh fails on drift.
# Deterministic: running it twice gives identical files.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=clients/python
DOMAINS=(common data training reward rollout)

mapfile -t PROTO_FILES < <(find protos -name '*.proto' | LC_ALL=C sort)
if [ "${#PROTO_FILES[@]}" -eq 0 ]; then
  echo "gen_protos: no .proto files under protos/" >&2
  exit 1
fi

# Only the generated packages are deleted; other files in clients/python/llamafleet are not ours.
for domain in "${DOMAINS[@]}"; do
  rm -rf "${OUT:?}/llamafleet/${domain}"
done

"$PYTHON" -m grpc_tools.protoc -I protos \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  "${PROTO_FILES[@]}"

for domain in "${DOMAINS[@]}"; do
  : >"$OUT/llamafleet/${domain}/__init__.py"
  : >"$OUT/llamafleet/${domain}/v1/__init__.py"
done
