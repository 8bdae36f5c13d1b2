#!/bin/sh
# Entry point of the PostgreSQL test-server image that build-images.sh makes. Like the
# official image's, for what the tests use: on the first start it creates a cluster in
# $PGDATA for user `postgres` with trust authentication from any address (the image is for
# tests only; POSTGRES_HOST_AUTH_METHOD may name another method) and the database
# $POSTGRES_DB; then it runs the command, `postgres` with the arguments given.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth=trust --no-locale -E UTF8 --no-sync >/dev/null
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-trust}" >>"$PGDATA/pg_hba.conf"
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
exec "$@"
