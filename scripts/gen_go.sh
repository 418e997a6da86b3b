#!/usr/bin/env bash
# Regenerates the Go stubs in clients/go/gen from protos/ with Debian's protoc, protoc-gen-go
# and protoc-gen-go-grpc (the only plugin versions that match Debian's grpc-go 1.33; see
# scripts/setup_go.sh). Output is deterministic; the stubs are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf clients/go/gen
mkdir -p clients/go/gen
protoc -I protos \
  --go_out=clients/go/gen --go_opt=paths=source_relative \
  --go-grpc_out=clients/go/gen --go-grpc_opt=paths=source_relative \
  $(find protos -name '*.proto' | sort)
