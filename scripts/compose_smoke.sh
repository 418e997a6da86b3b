#!/usr/bin/env bash
# The containers for real: builds the images of compose/, starts the suite with
# `--scale rollout=2 --scale reward=2`, builds a tiny model into the `models` volume and runs the
# demo's pipeline through the containers (scripts/compose_smoke.py): an SFT job, then a PPO job
# whose rollouts and scores come from the scaled containers, with `docker kill` of one rollout
# container mid-job, and 0 lost / 0 doubled items counted from Redis at the end.
#
#   bash scripts/compose_smoke.sh            # needs root where no Docker daemon runs yet
#
# What it brings up, it takes down (trap on EXIT): the compose project and its volumes, the
# images it built, the HTTP server that lends the local torch wheel to the build, and, when it
# had to start one, the Docker daemon (by pid), its data root, the docker0 bridge and the
# iptables rules the daemon added.
#
# Settings (environment):
#   LLAMAFLEET_DOCKER_CACHE=DIR   keep the started daemon's data root in DIR between runs: the
#                                 base image, the built images and the build cache stay there,
#                                 so a second run only rebuilds what changed (the daemon is
#                                 still stopped at the end)
#   LLAMAFLEET_BASE_IMAGE=IMAGE   the Python 3.11 base to build on; default: python:3.11-slim when
#                                 the registry answers, else one built here from Debian's
#                                 repository with debootstrap (plus redis-server for the redis
#                                 service, in place of redis:7)
#   LLAMAFLEET_SMOKE_PPO_STEPS=N  PPO steps (default 6)
# Exit status 0: every check passed; 1: a check failed (the message says which); 3: no Docker
# engine can run here (not root and no daemon), with the reason.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
START=$(date +%s)
stamp() { echo "== [$(($(date +%s) - START))s] $*"; }
# Long steps run in the background and are waited for: bash runs a trap only between commands,
# so a TERM (CI's timeout) during a foreground `docker-compose build` would wait for the build.
CHILD=""
run() { "$@" & CHILD=$!; wait "$CHILD"; local rc=$?; CHILD=""; return "$rc"; }
TIMINGS=()
timed() {  # timed NAME COMMAND...: run it, record its seconds
  local name=$1 t0=$(date +%s); shift
  run "$@" || return $?
  TIMINGS+=("$name=$(($(date +%s) - t0))s")
}
die() { echo "compose_smoke: $*" >&2; exit 1; }

if ! docker info >/dev/null 2>&1 && [ "$(id -u)" != 0 ]; then
  echo "compose_smoke: SKIP: no Docker daemon answers and starting one needs root" >&2
  exit 3
fi
# the driver needs the client (grpc, redis-py, the stubs): set up once; CI's test.sh did already
[ -x .venv/bin/python ] || bash scripts/setup.sh
VPY=$ROOT/.venv/bin/python

SCRATCH=$(mktemp -d /var/tmp/llamafleet-smoke.XXXXXX)
PROJECT=llamafleet-smoke
DOCKERD_PID="" HTTP_PID="" HAD_DOCKER0=0 COMPOSE=() BUILT_IMAGES=()

# The daemon adds iptables chains to the filter and nat tables (and sets FORWARD to DROP) and
# turns on IP forwarding; a daemon this script started leaves both as they were before it.
save_firewall() {
  cat /proc/sys/net/ipv4/ip_forward >"$SCRATCH/ip_forward.before"
  iptables-save >"$SCRATCH/iptables.before" 2>/dev/null || rm -f "$SCRATCH/iptables.before"
}
restore_firewall() {
  [ -f "$SCRATCH/iptables.before" ] || return 0
  local table chains
  for table in filter nat; do
    if grep -q "^\*$table\$" "$SCRATCH/iptables.before"; then
      sed -n "/^\*$table\$/,/^COMMIT\$/p" "$SCRATCH/iptables.before"
    else  # the table was empty: built-in chains accepting, nothing else
      case $table in
        filter) chains="INPUT FORWARD OUTPUT" ;;
        nat) chains="PREROUTING INPUT OUTPUT POSTROUTING" ;;
      esac
      echo "*$table"
      for c in $chains; do echo ":$c ACCEPT [0:0]"; done
      echo "COMMIT"
    fi
  done | iptables-restore
  cat "$SCRATCH/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
}

cleanup() {
  local rc=$?
  set +e
  [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  if [ ${#COMPOSE[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
    stamp "cleanup: compose down -v"
    "${COMPOSE[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1
    if [ -z "${LLAMAFLEET_DOCKER_CACHE:-}" ] && [ ${#BUILT_IMAGES[@]} -gt 0 ]; then
      docker image rm -f "${BUILT_IMAGES[@]}" >/dev/null 2>&1
    elif [ -n "${LLAMAFLEET_DOCKER_CACHE:-}" ]; then
      docker image prune -f >/dev/null 2>&1  # earlier builds' layers: the cache does not grow
    fi
  fi
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null && wait "$HTTP_PID" 2>/dev/null
  if [ -n "$DOCKERD_PID" ]; then
    stamp "cleanup: stopping dockerd (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    # the daemon's bridge and its iptables rules, when this run created them
    if [ "$HAD_DOCKER0" = 0 ] && ip link show docker0 >/dev/null 2>&1; then
      ip link delete docker0 2>/dev/null
    fi
    restore_firewall
  fi
  rm -rf "$SCRATCH"  # with LLAMAFLEET_DOCKER_CACHE the data root lives there, not here
  stamp "done (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. a Docker daemon ---------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
  stamp "using the running Docker daemon"
else
  if [ "$(id -u)" != 0 ]; then
    echo "compose_smoke: SKIP: no Docker daemon answers and starting one needs root" >&2
    exit 3
  fi
  bash scripts/setup_docker.sh
  command -v dockerd >/dev/null || { echo "compose_smoke: SKIP: dockerd not installed" >&2; exit 3; }
  ip link show docker0 >/dev/null 2>&1 && HAD_DOCKER0=1
  save_firewall
  DATA_ROOT=${LLAMAFLEET_DOCKER_CACHE:-$SCRATCH/docker-data}
  mkdir -p "$DATA_ROOT" "$SCRATCH/exec"
  export DOCKER_HOST="unix://$SCRATCH/docker.sock"
  stamp "starting dockerd (data root $DATA_ROOT)"
  dockerd --data-root "$DATA_ROOT" --exec-root "$SCRATCH/exec" --pidfile "$SCRATCH/dockerd.pid" \
    -H "$DOCKER_HOST" >"$SCRATCH/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  if ! docker info >/dev/null 2>&1; then
    tail -20 "$SCRATCH/dockerd.log" >&2
    echo "compose_smoke: SKIP: dockerd did not start (log above)" >&2
    exit 3
  fi
fi

if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
else
  bash scripts/setup_docker.sh
  COMPOSE_CMD=(docker-compose)
fi
stamp "compose: $("${COMPOSE_CMD[@]}" version --short 2>/dev/null || "${COMPOSE_CMD[@]}" version | head -1)"

# --- 2. base images ---------------------------------------------------------------------------------
LOCAL_BASE=llamafleet-local/python:3.11-bookworm
LOCAL_REDIS=llamafleet-local/redis:7.0-bookworm
build_local_base() {
  if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    stamp "local base image $LOCAL_BASE: cached"
    return
  fi
  bash scripts/setup_docker.sh
  local mirror rootfs=$SCRATCH/rootfs
  mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/* \
    2>/dev/null | grep -v security | head -1 | awk '{print $2}' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  stamp "debootstrap bookworm from $mirror (no image registry reachable)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$SCRATCH/debootstrap.log" 2>&1 \
    || { tail -20 "$SCRATCH/debootstrap.log" >&2; die "debootstrap failed"; }
  # this machine's CA bundle, so that pip inside the image trusts what the machine trusts
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  chroot "$rootfs" python3 -m venv /opt/python
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs"
  docker run --rm "$LOCAL_BASE" python -c 'import sys; print("base python", sys.version.split()[0])'
}
build_local_redis() {
  if docker image inspect "$LOCAL_REDIS" >/dev/null 2>&1; then return; fi
  stamp "local redis image from Debian's redis-server"
  docker build -q -t "$LOCAL_REDIS" - >/dev/null <<EOF
FROM $LOCAL_BASE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server"]
EOF
}
if [ -z "${LLAMAFLEET_BASE_IMAGE:-}" ]; then
  if timeout 30 docker pull -q python:3.11-slim >/dev/null 2>&1 \
      && timeout 30 docker pull -q redis:7 >/dev/null 2>&1; then
    stamp "registry reachable: python:3.11-slim and redis:7"
    export LLAMAFLEET_BASE_IMAGE=python:3.11-slim LLAMAFLEET_REDIS_IMAGE=redis:7
  else
    timed base_images build_local_base
    build_local_redis
    export LLAMAFLEET_BASE_IMAGE=$LOCAL_BASE LLAMAFLEET_REDIS_IMAGE=$LOCAL_REDIS
  fi
fi

# torch: this machine's local CPU wheel (pip's find-links) lent to the build over HTTP on the
# bridge; without one, the Dockerfile's default wheel index
WHEELS=""
for d in $("$VPY" -m pip config get global.find-links 2>/dev/null) ${LLAMAFLEET_TORCH_WHEELS:-}; do
  compgen -G "$d/torch-2.13.0*.whl" >/dev/null && WHEELS=$d
done
if [ -n "$WHEELS" ]; then
  # the host's address on the default bridge (a new daemon's network inspect may leave the
  # gateway out: then the bridge interface's own address)
  GATEWAY=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
  if [ -z "$GATEWAY" ]; then
    bridge=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
    GATEWAY=$(ip -4 -o addr show "${bridge:-docker0}" | awk '{print $4}' | cut -d/ -f1 | head -1)
  fi
  [ -n "$GATEWAY" ] || die "cannot tell the Docker bridge's address (to lend the torch wheel)"
  # a fixed port when free: the URL is a build argument, part of the layer cache's key, so a
  # new port each run would rebuild torch and everything after it
  PORT=$("$VPY" -c "
import socket
from llamafleet.redis_local import free_port
with socket.socket() as s:
    try:
        s.bind(('$GATEWAY', 38117)); print(38117)
    except OSError:
        print(free_port())")
  python3 -m http.server --bind "$GATEWAY" --directory "$WHEELS" "$PORT" >"$SCRATCH/http.log" 2>&1 &
  HTTP_PID=$!
  export LLAMAFLEET_TORCH_FIND_LINKS="http://$GATEWAY:$PORT/"
  stamp "torch wheel from $WHEELS served at $LLAMAFLEET_TORCH_FIND_LINKS"
fi

# --- 3. the compose project ---------------------------------------------------------------------------
free_port() { "$VPY" -c 'from llamafleet.redis_local import free_port; print(free_port())'; }
export LLAMAFLEET_TOKEN=${LLAMAFLEET_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LLAMAFLEET_DATA_HOST_PORT=$(free_port) LLAMAFLEET_TRAINING_HOST_PORT=$(free_port)
SMOKE_REDIS_PORT=$(free_port)
# the smoke run's additions: Redis published on loopback (the driver counts from it), short
# leases so that a killed worker's items are re-claimed within seconds, one torch thread per
# worker (four workers and a training job share this machine's cores; as `llamafleet up` does)
cat >"$SCRATCH/smoke.yaml" <<EOF
services:
  redis:
    ports: ["127.0.0.1:$SMOKE_REDIS_PORT:6379"]
  rollout:
    environment:
      LLAMAFLEET_ROLLOUT_WORKER_LEASE_MS: "3000"
      OMP_NUM_THREADS: "1"
  reward:
    environment:
      LLAMAFLEET_REWARD_LEASE_MS: "3000"
      LLAMAFLEET_REWARD_WORKER_THREADS: "2"
      OMP_NUM_THREADS: "1"
EOF
COMPOSE=("${COMPOSE_CMD[@]}" -p "$PROJECT" -f compose/docker-compose.yaml -f "$SCRATCH/smoke.yaml")
export LLAMAFLEET_BASE_MODEL=/models/tiny

"${COMPOSE[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true  # a run cut short before
stamp "building the images (base $LLAMAFLEET_BASE_IMAGE)"
build_start=$(date +%s)
run "${COMPOSE[@]}" build >"$SCRATCH/build.log" 2>&1 || { tail -40 "$SCRATCH/build.log" >&2; die "build failed"; }
# compose names them <project>_<service> (v1) or <project>-<service> (v2)
mapfile -t BUILT_IMAGES < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "^$PROJECT[-_]")
BUILD_S=$(($(date +%s) - build_start))
TIMINGS+=("build=${BUILD_S}s")
stamp "images built in ${BUILD_S}s"

stamp "tiny model into the models volume"
timed tiny_model "${COMPOSE[@]}" run --rm --no-deps -T training llamafleet tiny-model /models/tiny --size tiny --force

wait_healthy() {  # every container of the project healthy (redis included), or fail
  local deadline=$(($(date +%s) + ${1:-300})) ids states
  while :; do
    mapfile -t ids < <("${COMPOSE[@]}" ps -q)
    states=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.RestartCount}}' "${ids[@]}")
    if ! grep -qvE ' running healthy ' <<<"$states" && [ "${#ids[@]}" -ge 7 ]; then
      echo "$states"
      return 0
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "$states" >&2
      "${COMPOSE[@]}" logs --tail 30 >&2
      die "containers not healthy in time"
    fi
    sleep 2
  done
}

stamp "up --scale rollout=2 --scale reward=2 (base /models/tiny)"
up_start=$(date +%s)
run "${COMPOSE[@]}" up -d --scale rollout=2 --scale reward=2
run wait_healthy 300
UP_S=$(($(date +%s) - up_start))
TIMINGS+=("up=${UP_S}s")
stamp "all 7 containers healthy in ${UP_S}s"

"${COMPOSE[@]}" ps
export SMOKE_REDIS_URL="redis://127.0.0.1:$SMOKE_REDIS_PORT/0"
export SMOKE_COMPOSE="${COMPOSE[*]}"
driver() {  # this checkout's client code, whatever the virtualenv was installed from
  PYTHONPATH="$ROOT:$ROOT/clients/python${PYTHONPATH:+:$PYTHONPATH}" \
    "$VPY" scripts/compose_smoke.py "$1" --data "127.0.0.1:$LLAMAFLEET_DATA_HOST_PORT" \
    --training "127.0.0.1:$LLAMAFLEET_TRAINING_HOST_PORT" --redis-url "$SMOKE_REDIS_URL" \
    --ppo-steps "${LLAMAFLEET_SMOKE_PPO_STEPS:-6}"
}

stamp "SFT job through the containers"
timed sft driver sft

stamp "restart the workers with the SFT model as their base"
export LLAMAFLEET_BASE_MODEL=/models/smoke-sft
restart_start=$(date +%s)
run "${COMPOSE[@]}" up -d --scale rollout=2 --scale reward=2
run wait_healthy 300
TIMINGS+=("restart=$(($(date +%s) - restart_start))s")

stamp "container users and state volumes"
run driver inspect

stamp "PPO job: rollouts and scores from the scaled containers, one rollout container killed"
timed ppo driver ppo

TIMINGS+=("total=$(($(date +%s) - START))s")
stamp "PASSED; TIMINGS ${TIMINGS[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
