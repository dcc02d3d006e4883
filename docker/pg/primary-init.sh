#!/bin/bash
# Run once by the postgres image's entrypoint when the primary's data directory is created
# (/docker-entrypoint-initdb.d): the replication role the relays and the HA standby use, the
# pg_hba.conf lines for them, and the HA standby's slot, so that --failover-standby ha_standby
# finds it even before the standby first connects.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD '${REPLICATOR_PASSWORD}';
GRANT pg_read_all_stats TO replicator;
SELECT pg_create_physical_replication_slot('ha_standby', true);
SQL
cat >>"$PGDATA/pg_hba.conf" <<HBA
host replication replicator all scram-sha-256
host postgres    replicator all scram-sha-256
HBA
