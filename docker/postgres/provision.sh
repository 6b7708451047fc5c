#!/bin/sh
# One-shot run by the `postgres-provision` service on every `docker compose up`:
# applies schema.sql (idempotent: roles rv_writer/rv_reader, table, indexes, grants) and
# sets the two role passwords from the environment (.env), so a changed password in .env
# takes effect on the next `up`. Connection: PGHOST/PGUSER/PGPASSWORD/PGDATABASE.
set -eu
: "${PG_RV_WRITER_PASSWORD:?PG_RV_WRITER_PASSWORD is not set (see .env.example)}"
: "${PG_RV_READER_PASSWORD:?PG_RV_READER_PASSWORD is not set (see .env.example)}"
export PGOPTIONS="${PGOPTIONS:--c client_min_messages=warning}"  # no "already exists" notices

psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc -f "${SCHEMA_FILE:-/rv/schema.sql}"
# Passwords travel as psql variables and are quoted by psql (:'name'), never spliced.
psql -v ON_ERROR_STOP=1 --quiet --no-psqlrc \
    -v writer_password="$PG_RV_WRITER_PASSWORD" \
    -v reader_password="$PG_RV_READER_PASSWORD" <<'SQL'
ALTER ROLE rv_writer WITH LOGIN PASSWORD :'writer_password';
ALTER ROLE rv_reader WITH LOGIN PASSWORD :'reader_password';
SQL
echo "postgres-provision: schema.sql applied to database ${PGDATABASE:-rv}; rv_writer and rv_reader passwords set"
