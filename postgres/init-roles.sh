#!/bin/sh
# Runs once, when the Compose stack's PostgreSQL volume is first created. Roles:
#   trending_owner  owns the database (no login);
#   sink            logs in, may create tables in schema public (its migrations) and owns only
#                   those; it cannot create schemas or databases;
#   grafana_ro      logs in, reads the tables, read-only by default, statements capped at 30 s.
# Passwords come from the secret files (docker-compose.yml `secrets:`), never from the repo or
# the environment.
set -eu
# psql reads the passwords from its environment (\getenv, psql 15+): on its command line `ps`
# would show them.
SINK_DB_PASSWORD=$(cat /run/secrets/sink_db_password)
GRAFANA_PG_PASSWORD=$(cat /run/secrets/grafana_pg_password)
export SINK_DB_PASSWORD GRAFANA_PG_PASSWORD
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv sink_pw SINK_DB_PASSWORD
\getenv grafana_pw GRAFANA_PG_PASSWORD
CREATE ROLE trending_owner NOLOGIN;
CREATE ROLE sink LOGIN PASSWORD :'sink_pw';
CREATE ROLE grafana_ro LOGIN PASSWORD :'grafana_pw';
ALTER ROLE grafana_ro SET default_transaction_read_only = on;
ALTER ROLE grafana_ro SET statement_timeout = '30s';
CREATE DATABASE trending OWNER trending_owner;
REVOKE ALL ON DATABASE trending FROM PUBLIC;
GRANT CONNECT ON DATABASE trending TO sink, grafana_ro;
\connect trending
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO sink;
GRANT USAGE ON SCHEMA public TO grafana_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE sink IN SCHEMA public GRANT SELECT ON TABLES TO grafana_ro;
SQL
