#!/usr/bin/env bash
# Run the project's own PostgreSQL cluster and MinIO server natively, data under .services/.
#
#   scripts/services.sh up       install what is missing, start both (harmless if already up)
#   scripts/services.sh down     stop both, by their own pid / pg_ctl
#   scripts/services.sh status
#   scripts/services.sh minio    only build (or find) the MinIO binary and print its path
#   scripts/services.sh {start,stop}-{postgres,minio}   one service (the fault tests use these)
#
# Ports and credentials come from the environment, else from .env (.env.test when
# RUN_HANDLER_ENV=test): DB_PORT DB_USER DB_PASSWORD DB_NAME S3_ENDPOINT_URL S3_ACCESS_KEY
# S3_SECRET_KEY.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.services"
# MinIO publishes no module versions for its RELEASE tags, so the pin is the pseudo-version of
# the final commit of github.com/minio/minio (2026-02-12).
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_BIN="$ROOT/.cache/minio-$MINIO_VERSION/minio"

say() { echo "services: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

load_env() {
  local file="$ROOT/.env" key value
  [ "${RUN_HANDLER_ENV:-}" = test ] && file="$ROOT/.env.test"
  [ -f "$file" ] || return 0
  while IFS='=' read -r key value; do
    [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
    [ -n "${!key+x}" ] && continue # the real environment wins
    value="${value%\"}"; value="${value#\"}"; value="${value%\'}"; value="${value#\'}"
    export "$key=$value"
  done <"$file"
}

load_env
DB_PORT="${DB_PORT:-5432}"
DB_USER="${DB_USER:-postgres}"
DB_PASSWORD="${DB_PASSWORD:-postgres}"
DB_NAME="${DB_NAME:-postgres}"
S3_ENDPOINT_URL="${S3_ENDPOINT_URL:-http://localhost:9000}"
S3_ACCESS_KEY="${S3_ACCESS_KEY:-minioadmin}"
S3_SECRET_KEY="${S3_SECRET_KEY:-minioadmin}"
MINIO_ADDRESS="${S3_ENDPOINT_URL#*://}"
MINIO_ADDRESS="${MINIO_ADDRESS%%/*}"
MINIO_PORT="${MINIO_ADDRESS##*:}"
MINIO_CONSOLE_PORT="${MINIO_CONSOLE_PORT:-9001}"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_is() { # pid_is PID WORD: the process lives and its command line mentions WORD
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# --- PostgreSQL --------------------------------------------------------------------------------

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$dir" ] && command -v pg_ctl >/dev/null; then dir="$(dirname "$(command -v pg_ctl)")"; fi
  if [ -z "$dir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "PostgreSQL server not found; installing Debian's postgresql-15"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2 ||
      die "could not install postgresql-15"
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] ||
    die "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql-15 (Debian: apt-get install postgresql-15)"
  echo "$dir"
}

# PostgreSQL refuses to run as root: as root, its commands run as the 'postgres' user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The cluster lives in .services/postgres, unless that folder is out of the postgres user's
# reach (a checkout under a private home directory), when it moves to a folder under /tmp.
pg_home() {
  if [ "$(id -u)" != 0 ]; then echo "$STATE/postgres"; return; fi
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' system user (Debian's postgresql-15 creates it)"
  mkdir -p "$STATE"
  if runuser -u postgres -- test -x "$STATE"; then
    echo "$STATE/postgres"
  else
    echo "/tmp/run-handler-$(echo "$ROOT" | cksum | cut -d ' ' -f 1)/postgres"
  fi
}

# Set by pg_paths, after pg_bin: installing PostgreSQL is what creates the 'postgres' user.
PG_HOME=""
PGDATA=""
pg_paths() {
  [ -n "$PG_HOME" ] && return 0
  pg_bin >/dev/null
  PG_HOME="$(pg_home)"
  PGDATA="$PG_HOME/data"
}

pg_running() {
  pg_paths
  [ -f "$PGDATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

pg_ensure_database() {
  local psql=("$1/psql" -h localhost -p "$DB_PORT" -U "$DB_USER" -d postgres -Atq)
  if [ -z "$(PGPASSWORD="$DB_PASSWORD" "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" ]; then
    PGPASSWORD="$DB_PASSWORD" "${psql[@]}" -c "CREATE DATABASE \"$DB_NAME\""
    say "created database $DB_NAME"
  fi
}

pg_up() {
  local bin
  bin="$(pg_bin)"
  pg_paths
  if ! pg_running && port_in_use "$DB_PORT"; then
    # Someone else's server (docker compose, a system cluster): use it if it takes our login.
    PGPASSWORD="$DB_PASSWORD" "$bin/psql" -h localhost -p "$DB_PORT" -U "$DB_USER" -d postgres -Atqc "SELECT 1" >/dev/null 2>&1 ||
      die "port $DB_PORT is taken by a program that does not accept the DB_USER/DB_PASSWORD login; stop it or set DB_PORT"
    say "using the PostgreSQL already listening on port $DB_PORT (not started by this script)"
    pg_ensure_database "$bin"
    return 0
  fi
  mkdir -p "$PG_HOME/run"
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_HOME" "$PG_HOME/run"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    say "creating PostgreSQL cluster in $PGDATA"
    local pwfile="$PG_HOME/pwfile"
    printf '%s\n' "$DB_PASSWORD" >"$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
    as_pg "$bin/initdb" -D "$PGDATA" -U "$DB_USER" --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$PG_HOME/initdb.log" 2>&1 ||
      { rm -f "$pwfile"; cat "$PG_HOME/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
  fi
  if pg_running; then
    say "PostgreSQL already running (port $DB_PORT)"
  else
    # A pid file left by a crash names a pid that may now belong to someone else.
    if [ -f "$PGDATA/postmaster.pid" ] && ! pid_is "$(head -n 1 "$PGDATA/postmaster.pid")" postgres; then
      say "removing stale $PGDATA/postmaster.pid"
      rm -f "$PGDATA/postmaster.pid"
    fi
    as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PG_HOME/postgres.log" -w -t 60 \
      -o "-p $DB_PORT -k $PG_HOME/run -c listen_addresses=localhost" start >/dev/null ||
      { tail -n 20 "$PG_HOME/postgres.log" >&2; die "PostgreSQL did not start"; }
    say "PostgreSQL started on port $DB_PORT (data $PGDATA)"
  fi
  pg_ensure_database "$bin"
}

pg_down() {
  if pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    say "PostgreSQL stopped"
  else
    say "PostgreSQL not running"
  fi
}

# --- MinIO -------------------------------------------------------------------------------------

MINIO_DIR="$STATE/minio"
MINIO_PID="$MINIO_DIR/minio.pid"

minio_binary() {
  [ -x "$MINIO_BIN" ] && return 0
  command -v go >/dev/null ||
    die "MinIO is built from source once and needs the Go toolchain (go 1.24 or newer), which is not on PATH"
  say "building MinIO $MINIO_VERSION with 'go install' (first time only, a few minutes)"
  local start=$SECONDS
  GOBIN="$(dirname "$MINIO_BIN")" GOFLAGS=-buildvcs=false go install "github.com/minio/minio@$MINIO_VERSION" >&2 ||
    die "could not build MinIO; see the go output above"
  say "MinIO built in $((SECONDS - start)) s: $MINIO_BIN"
}

minio_running() { [ -f "$MINIO_PID" ] && pid_is "$(cat "$MINIO_PID")" "$MINIO_BIN"; }

minio_up() {
  if minio_running; then
    say "MinIO already running (pid $(cat "$MINIO_PID"), $S3_ENDPOINT_URL)"
    return 0
  fi
  rm -f "$MINIO_PID"
  if port_in_use "$MINIO_PORT"; then
    curl -sf "http://127.0.0.1:$MINIO_PORT/minio/health/ready" >/dev/null 2>&1 ||
      die "port $MINIO_PORT is taken by a program that is not an S3 server; stop it or change S3_ENDPOINT_URL"
    say "using the S3 server already listening on port $MINIO_PORT (not started by this script)"
    return 0
  fi
  minio_binary
  mkdir -p "$MINIO_DIR/data"
  MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" MINIO_UPDATE=off \
    MINIO_BROWSER=off nohup "$MINIO_BIN" server "$MINIO_DIR/data" --quiet \
    --address "127.0.0.1:$MINIO_PORT" --console-address "127.0.0.1:$MINIO_CONSOLE_PORT" \
    >"$MINIO_DIR/minio.log" 2>&1 </dev/null &
  echo $! >"$MINIO_PID"
  for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$MINIO_PORT/minio/health/ready" >/dev/null 2>&1; then
      say "MinIO started on $S3_ENDPOINT_URL (pid $(cat "$MINIO_PID"), data $MINIO_DIR/data)"
      return 0
    fi
    minio_running || { tail -n 20 "$MINIO_DIR/minio.log" >&2; die "MinIO exited at start"; }
    sleep 0.5
  done
  die "MinIO did not become ready in 60 s; see $MINIO_DIR/minio.log"
}

minio_down() {
  if ! minio_running; then
    rm -f "$MINIO_PID"
    say "MinIO not running"
    return 0
  fi
  local pid
  pid="$(cat "$MINIO_PID")"
  kill "$pid"
  for _ in $(seq 1 50); do
    pid_is "$pid" "$MINIO_BIN" || break
    sleep 0.2
  done
  pid_is "$pid" "$MINIO_BIN" && kill -9 "$pid"
  rm -f "$MINIO_PID"
  say "MinIO stopped"
}

# --- main --------------------------------------------------------------------------------------

command -v curl >/dev/null || die "curl is needed to check that MinIO is up (Debian: apt-get install curl)"
case "${1:-}" in
up) pg_up; minio_up ;;
down) minio_down; pg_down ;;
status)
  pg_running && say "PostgreSQL running (data $PGDATA, port $DB_PORT)" || say "PostgreSQL not running"
  minio_running && say "MinIO running (pid $(cat "$MINIO_PID"))" || say "MinIO not running"
  ;;
minio) minio_binary; echo "$MINIO_BIN" ;;
start-postgres) pg_up ;;
stop-postgres) pg_down ;;
start-minio) minio_up ;;
stop-minio) minio_down ;;
owns)
  # Exit 0 if both services are the ones this script started (so the fault tests may stop them).
  pg_running && minio_running
  ;;
*) die "usage: $0 up|down|status|minio|owns|{start,stop}-{postgres,minio}" ;;
esac
