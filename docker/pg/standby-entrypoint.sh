#!/bin/bash
# A standby for docker/compose.yml, run as the postgres user: on first start, a base backup of
# the primary (the relay takes none), then recovery settings pointing at UPSTREAM_CONNINFO
# (the primary for the HA standby, a relay for the region's standbys); then the server.
# Env: PRIMARY_HOST, REPLICATOR_PASSWORD, UPSTREAM_CONNINFO, SLOT (optional: a slot on the
# primary to stream from, as the HA standby does).
set -euo pipefail
: "${PGDATA:=/var/lib/postgresql/data}"
export PGPASSWORD="$REPLICATOR_PASSWORD"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h "$PRIMARY_HOST" -U replicator -d postgres; do sleep 1; done
  pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -X stream --checkpoint=fast
  chmod 0700 "$PGDATA"
  touch "$PGDATA/standby.signal"
  {
    echo "primary_conninfo = '$UPSTREAM_CONNINFO password=$REPLICATOR_PASSWORD'"
    [ -n "${SLOT:-}" ] && echo "primary_slot_name = '$SLOT'"
    echo "recovery_target_timeline = 'latest'"
    echo "hot_standby = on"
  } >>"$PGDATA/postgresql.auto.conf"
fi
exec postgres -D "$PGDATA"
