#!/usr/bin/env bash
# Installs the Go toolchain for clients/go from Debian's packages (no Go module proxy is
# reachable here): go 1.19, grpc-go 1.33 and protobuf-go sources under /usr/share/gocode, and
# the matching protoc plugins. golang/protobuf 1.5 must be named explicitly: with the 1.3 that
# apt would pick, everything compiles and the first RPC panics (../shared/notes/go-client.md).
set -euo pipefail
GO_PKGS="golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev \
golang-google-protobuf-dev golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc \
protobuf-compiler"
need=0
for p in $GO_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need=1
done
if [ "$need" = 1 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "setup_go: installing the Go toolchain with apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $GO_PKGS
fi
