#!/bin/sh
# The application's role and database, as in the embedded stack: a plain login role, never a
# superuser, so it competes for the ordinary connection slots exactly as a Lambda's role does.
set -eu
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
  -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" -v app_db="$APP_DB" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
SQL
