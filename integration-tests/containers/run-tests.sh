#!/usr/bin/env bash
# Runs the server tests against containers (EVENT_BUS_TEST_SERVERS=containers), on a
# machine without an image registry:
#  1. installs Debian's docker.io if `docker` or `dockerd` is missing (as root);
#  2. starts a private Docker daemon (vfs storage, under a temporary folder) unless one
#     answers at DOCKER_HOST (default unix:///var/run/docker.sock);
#  3. puts docker-api-proxy.py in front of a daemon older than the Docker API version
#     testcontainers speaks (Debian 12's docker.io is);
#  4. builds the test-server images with build-images.sh (kept if they exist);
#  5. runs `cargo test` with the given arguments (default: the workspace's unit and
#     integration tests, with all features);
#  6. checks that every test container was removed, and stops what it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$PWD/integration-tests/containers
# The Docker API version testcontainers sends (bollard's default, fixed per release).
client_api=1.49

log() { echo "run-tests.sh: $*"; }

api_version() { docker version --format '{{.Server.APIVersion}}' 2>/dev/null; }

wait_for() { # wait_for WHAT COMMAND...: up to 30 s
  local what=$1
  shift
  for _ in $(seq 1 150); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "error: $what did not come up" >&2
  return 1
}

work=$(mktemp -d /tmp/event-bus-docker.XXXXXX)
daemon_pid='' proxy_pid='' bridge_existed=1
cleanup() {
  local status=$?
  set +e
  if [ -n "$proxy_pid" ]; then
    kill "$proxy_pid" 2>/dev/null
    wait "$proxy_pid" 2>/dev/null
  fi
  if [ -n "$daemon_pid" ]; then
    log "stopping the private Docker daemon (pid $daemon_pid)"
    kill "$daemon_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$daemon_pid" 2>/dev/null; then
      log "the Docker daemon did not stop within 20 s: killing it"
      kill -KILL "$daemon_pid"
    fi
    if [ "$bridge_existed" = 0 ]; then
      ip link delete docker0 2>/dev/null
    fi
  fi
  rm -rf "$work" 2>/dev/null || true
  exit "$status"
}
trap cleanup EXIT

if ! command -v docker >/dev/null || { ! api_version >/dev/null && ! command -v dockerd >/dev/null; }; then
  [ "$(id -u)" = 0 ] || { echo "error: Docker is not installed; install docker.io (as root)" >&2; exit 1; }
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$work/apt.log" 2>&1
  apt-get install -y -q --no-install-recommends docker.io >>"$work/apt.log" 2>&1 ||
    { cat "$work/apt.log" >&2; exit 1; }
fi

if ! api_version >/dev/null; then
  log "no Docker daemon answers: starting a private one under $work"
  ip link show docker0 >/dev/null 2>&1 || bridge_existed=0
  # No iptables or ip_forward changes: published ports go through docker-proxy, and the
  # host firewall and sysctls stay as they are.
  dockerd --storage-driver vfs --data-root "$work/data" --exec-root "$work/exec" \
    --pidfile "$work/dockerd.pid" -H "unix://$work/docker.sock" --ip 127.0.0.1 \
    --iptables=false --ip-forward=false >"$work/dockerd.log" 2>&1 </dev/null &
  daemon_pid=$!
  export DOCKER_HOST=unix://$work/docker.sock
  wait_for "the Docker daemon" api_version || { tail -n 20 "$work/dockerd.log" >&2; exit 1; }
fi

daemon_api=$(api_version)
if [ "$(printf '%s\n' "$daemon_api" "$client_api" | sort -V | head -n 1)" != "$client_api" ]; then
  socket=${DOCKER_HOST:-unix:///var/run/docker.sock}
  case $socket in
    unix://*) ;;
    *) echo "error: the daemon at $socket speaks Docker API $daemon_api; testcontainers needs" \
      "$client_api, and docker-api-proxy.py only fronts a Unix socket" >&2; exit 1 ;;
  esac
  log "the daemon speaks Docker API $daemon_api (< $client_api): starting docker-api-proxy.py"
  python3 "$here/docker-api-proxy.py" "$work/api.sock" "${socket#unix://}" "$daemon_api" \
    >"$work/proxy.log" 2>&1 </dev/null &
  proxy_pid=$!
  export DOCKER_HOST=unix://$work/api.sock
  wait_for "docker-api-proxy.py" test -S "$work/api.sock"
fi

bash "$here/build-images.sh"

# The workspace's tests as .ci/run builds them (same packages and features: nothing is
# rebuilt), less the doctests, which need no server.
[ $# -gt 0 ] || set -- --workspace --all-features --tests
log "EVENT_BUS_TEST_SERVERS=containers cargo test $*"
EVENT_BUS_TEST_SERVERS=containers cargo test "$@"

# Each test binary's reaper removes its containers as the binary exits.
no_test_containers() { [ -z "$(docker ps -aq --filter label=multibus.test-server)" ]; }
if ! wait_for "the removal of the test containers" no_test_containers; then
  docker ps -a --filter label=multibus.test-server >&2
  exit 1
fi
log "all test containers were removed"
