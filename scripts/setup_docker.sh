#!/usr/bin/env bash
# Installs what scripts/compose_smoke.sh needs, from Debian's packages, when missing: the Docker
# engine (docker.io: dockerd, containerd, runc; the smoke script starts its own daemon), Debian's
# docker-compose 1.29 (v1; Debian 12 does not package the v2 plugin) and debootstrap (a base
# image built from Debian's repository where no image registry is reachable). Idempotent.
set -euo pipefail
pkgs=()
command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  pkgs+=(docker-compose)
fi
command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "setup_docker: installing ${pkgs[*]} with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
