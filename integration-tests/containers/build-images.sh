#!/usr/bin/env bash
# Builds the Redis and PostgreSQL images the tests start when no server runs, without an
# image registry: each is a root filesystem of this machine's own server binaries and the
# shared libraries they load, imported with `docker import` under the name the tests use
# (the pinned name in integration-tests/src/*_server.rs, or EVENT_BUS_TEST_REDIS_IMAGE /
# EVENT_BUS_TEST_POSTGRES_IMAGE). An image that exists is kept; REBUILD=1 rebuilds.
#
# Needs: the `docker` command and a daemon (DOCKER_HOST), /usr/bin/redis-server, the
# PostgreSQL server binaries (/usr/lib/postgresql/<major>/bin), openssl, ldd and tar.
# On Debian: apt-get install docker.io redis-server postgresql openssl
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../src

# The image a server's tests use: its override variable, else the pinned name.
image_name() {
  local var=$1 file=$2 pinned
  pinned=$(sed -n 's/^    image: "\(.*\)",$/\1/p' "$src/$file")
  [ -n "$pinned" ] || { echo "error: no pinned image found in $src/$file" >&2; exit 1; }
  echo "${!var:-$pinned}"
}

needed() {
  if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; then
    echo "image $1 exists"
    return 1
  fi
}

# copy_with_libs ROOT FILE...: each FILE, and every shared library it loads, at its own
# path under ROOT.
copy_with_libs() {
  local root=$1 file
  shift
  for file in "$@" $(ldd "$@" 2>/dev/null | grep -o '/[^ :]*' | sort -u); do
    cp --parents --dereference "$file" "$root"
  done
}

# import ROOT IMAGE [--change ...]: ROOT as a one-layer image, files owned by root except
# what ROOT/.owned-by-999 lists (paths relative to ROOT), owned by uid/gid 999.
import() {
  local root=$1 image=$2 tarball
  shift 2
  tarball=$(mktemp)
  local owned=()
  [ -f "$root/.owned-by-999" ] && mapfile -t owned <"$root/.owned-by-999"
  tar -C "$root" --numeric-owner --owner=0 --group=0 --exclude=./.owned-by-999 \
    "${owned[@]/#/--exclude=./}" -cf "$tarball" .
  if [ ${#owned[@]} -gt 0 ]; then
    tar -C "$root" --numeric-owner --owner=999 --group=999 -rf "$tarball" "${owned[@]/#/./}"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$@" "$tarball" "$image" >/dev/null
  rm -f "$tarball"
  echo "built $image ($(du -sh "$root" | cut -f1))"
}

base_files() {
  local root=$1 user=$2 home=$3
  chmod 755 "$root"
  mkdir -p "$root/etc" "$root/tmp" "$root$home"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:999:999::%s:/bin/sh\n' "$user" "$home" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:999:\n' "$user" >"$root/etc/group"
}

build_redis() {
  local image root
  image=$(image_name EVENT_BUS_TEST_REDIS_IMAGE redis_server.rs)
  needed "$image" || return 0
  root=$(mktemp -d)
  copy_with_libs "$root" /usr/bin/redis-server
  base_files "$root" redis /data
  chmod 1777 "$root/data"
  ldconfig -r "$root" 2>/dev/null || true
  import "$root" "$image" --change 'USER redis' --change 'WORKDIR /data' \
    --change 'EXPOSE 6379' --change 'CMD ["redis-server", "--protected-mode", "no"]'
  echo "  $(/usr/bin/redis-server --version)"
  rm -rf "$root"
}

build_postgres() {
  local image root bin lib share major
  image=$(image_name EVENT_BUS_TEST_POSTGRES_IMAGE postgres_server.rs)
  needed "$image" || return 0
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  major=$(basename "$(dirname "$bin")")
  lib=/usr/lib/postgresql/$major/lib
  share=/usr/share/postgresql/$major
  root=$(mktemp -d)
  # JIT (llvmjit) is left out: without it the server runs queries without JIT.
  copy_with_libs "$root" "$bin/postgres" "$bin/initdb" /bin/sh \
    $(find "$lib" -maxdepth 1 -name '*.so' ! -name 'llvmjit*')
  mkdir -p "$root/usr/share/postgresql"
  cp -R "$share" "$root/usr/share/postgresql/"
  cp -R /usr/share/zoneinfo "$root/usr/share/"
  base_files "$root" postgres /var/lib/postgresql
  mkdir -p "$root/var/run/postgresql" "$root/etc/ssl/certs" "$root/etc/ssl/private" \
    "$root/usr/local/bin"
  chmod 1777 "$root/var/lib/postgresql" "$root/var/run/postgresql"
  # A fresh self-signed certificate, where Debian's images keep theirs, for the TLS tests.
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=localhost \
    -keyout "$root/etc/ssl/private/ssl-cert-snakeoil.key" \
    -out "$root/etc/ssl/certs/ssl-cert-snakeoil.pem" 2>/dev/null
  chmod 600 "$root/etc/ssl/private/ssl-cert-snakeoil.key"
  echo etc/ssl/private/ssl-cert-snakeoil.key >"$root/.owned-by-999"
  install -m 755 "$here/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
  ldconfig -r "$root" 2>/dev/null || true
  import "$root" "$image" --change 'USER postgres' \
    --change "ENV PATH=$bin:/usr/local/bin:/usr/bin:/bin" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' --change 'CMD ["postgres"]'
  echo "  $("$bin/postgres" --version)"
  rm -rf "$root"
}

build_redis
build_postgres
