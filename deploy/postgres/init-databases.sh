#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as the
# superuser over the image's temporary socket-only server. One database per service, each owned by
# a login role of its own (named after it) with the password from the environment: a service can
# neither read another's database nor act as the superuser.
#
# Also runs by hand against any server an administrator reaches (PGHOST, PGUSER, ...):
#   AUTH_DATABASE_PASSWORD=... USERS_DATABASE_PASSWORD=... AIRTABLE_DATABASE_PASSWORD=... \
#     ANALYTICS_DATABASE_PASSWORD=... sh deploy/postgres/init-databases.sh
# A role or database that already exists is left as it is (its password too). The names are
# those of the compose file; AUTH_DATABASE_NAME, USERS_DATABASE_NAME, AIRTABLE_DATABASE_NAME and
# ANALYTICS_DATABASE_NAME choose others.
set -eu

# database (and role) name, password
create_database() {
  psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-${PGUSER:-postgres}}" \
    --dbname postgres -v name="$1" -v password="$2" <<'SQL'
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') AS create_role \gset
\if :create_role
  CREATE ROLE :"name" LOGIN PASSWORD :'password';
\endif
SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') AS create_database \gset
\if :create_database
  CREATE DATABASE :"name" OWNER :"name";
  -- Only its owner (and the superuser) may connect; PostgreSQL lets every role in by default.
  REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
\endif
SQL
}

create_database "${AUTH_DATABASE_NAME:-pyairtable_auth}" "${AUTH_DATABASE_PASSWORD:?set AUTH_DATABASE_PASSWORD}"
create_database "${USERS_DATABASE_NAME:-pyairtable_users}" "${USERS_DATABASE_PASSWORD:?set USERS_DATABASE_PASSWORD}"
create_database "${AIRTABLE_DATABASE_NAME:-pyairtable_airtable}" \
  "${AIRTABLE_DATABASE_PASSWORD:?set AIRTABLE_DATABASE_PASSWORD}"
create_database "${ANALYTICS_DATABASE_NAME:-pyairtable_analytics}" \
  "${ANALYTICS_DATABASE_PASSWORD:?set ANALYTICS_DATABASE_PASSWORD}"
