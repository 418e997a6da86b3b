#!/usr/bin/env bash
# The Go client: stubs match protos/ (regenerated with Debian's plugins), gofmt, go vet, go test.
# The Go tests run before pytest in scripts/test.sh so pytest's summary is the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/gen_go.sh
git diff --exit-code --stat -- clients/go/gen >&2 ||
  { echo "check_go: Go stubs differ from protos: run scripts/gen_go.sh and commit" >&2; exit 1; }
untracked=$(git status --porcelain --untracked-files=all -- clients/go/gen | grep '^??' || true)
[ -z "$untracked" ] || { echo "$untracked" >&2; echo "check_go: commit the new Go stubs" >&2; exit 1; }
cd clients/go
export GOPROXY=off GOFLAGS=-mod=mod
unformatted=$(gofmt -l $(find . -name '*.go' -not -path './gen/*'))
[ -z "$unformatted" ] || { echo "check_go: gofmt needed: $unformatted" >&2; exit 1; }
go vet ./...
LLAMAFLEET_PYTHON="${LLAMAFLEET_PYTHON:-$(cd ../.. && pwd)/.venv/bin/python}" \
  go test -count=1 $(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...)
