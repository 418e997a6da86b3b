#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests of the web UI (tests/web), when it is missing.
# Idempotent. Playwright drives this system browser; `playwright install` (a download) is never
# used. Set LLAMAFLEET_CHROMIUM to use a browser elsewhere.
set -euo pipefail

if [ -n "${LLAMAFLEET_CHROMIUM:-}" ] && [ -x "${LLAMAFLEET_CHROMIUM}" ]; then
  exit 0
fi
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "setup_browser: installing chromium with apt"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
chromium --version
