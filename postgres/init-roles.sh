#!/bin/sh
# Runs once, when the Compose stack's PostgreSQL volume is first created: the sink's role owns
# the `trending` database's tables (its migrations create them) and nothing else; Grafana reads
# through a read-only role. Passwords come from the environment (.env), never from the repo.
set -eu
# psql reads the passwords from its environment (\getenv, psql 15+): on its command line `ps`
# would show them.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv sink_pw SINK_DB_PASSWORD
\getenv grafana_pw GRAFANA_PG_PASSWORD
CREATE ROLE sink LOGIN PASSWORD :'sink_pw';
CREATE ROLE grafana_ro LOGIN PASSWORD :'grafana_pw';
CREATE DATABASE trending OWNER sink;
\connect trending
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO sink;
GRANT USAGE ON SCHEMA public TO grafana_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE sink IN SCHEMA public GRANT SELECT ON TABLES TO grafana_ro;
SQL
