#!/usr/bin/env bash
# Starts and stops Azurite, the Azure Storage emulator, for bi-ledger's tests.
#
#   tools/azurite.sh start    install (from the committed lock file) if needed,
#                             start on 127.0.0.1, wait until the blob, queue and
#                             table ports answer
#   tools/azurite.sh stop     stop the Azurite this script started (by its PID)
#   tools/azurite.sh status   say whether it runs; exit 0 if it does, 3 if not
#   tools/azurite.sh env      print the AZURE_STORAGE_CONNECTION_STRING export
#                             for the configured ports
#
# Environment (all optional):
#   AZURITE_BLOB_PORT / AZURITE_QUEUE_PORT / AZURITE_TABLE_PORT
#                             ports (default 10000 / 10001 / 10002)
#   AZURITE_START_TIMEOUT     seconds to wait for the ports (default 60)
#   AZURITE_STATE_DIR         where the PID file and log go
#                             (default tools/.azurite)
#
# Data is kept in memory only (--inMemoryPersistence): every start is empty.
set -euo pipefail

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOST=127.0.0.1
BLOB_PORT="${AZURITE_BLOB_PORT:-10000}"
QUEUE_PORT="${AZURITE_QUEUE_PORT:-10001}"
TABLE_PORT="${AZURITE_TABLE_PORT:-10002}"
TIMEOUT="${AZURITE_START_TIMEOUT:-60}"
STATE_DIR="${AZURITE_STATE_DIR:-$TOOLS_DIR/.azurite}"
PID_FILE="$STATE_DIR/azurite.pid"
LOG_FILE="$STATE_DIR/azurite.log"
AZURITE_JS="$TOOLS_DIR/node_modules/azurite/dist/src/azurite.js"

# Azurite's fixed development account (public, documented by Microsoft).
DEV_ACCOUNT=devstoreaccount1
DEV_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

die() {
    echo "azurite.sh: $*" >&2
    exit 1
}

port_answers() {
    # bash's /dev/tcp: connects, and closes at once.
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# The PID in the PID file, if that process is alive and is our Azurite (a
# stale file may name a PID the system has since given to another process).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q azurite || return 1
    echo "$pid"
}

install() {
    if [[ -f "$AZURITE_JS" ]]; then
        return
    fi
    command -v npm >/dev/null || die "npm is not installed; Azurite needs Node.js and npm"
    echo "azurite.sh: installing Azurite from tools/package-lock.json (npm ci)..." >&2
    npm ci --prefix "$TOOLS_DIR" --no-audit --no-fund --loglevel=error >&2 \
        || die "npm ci --prefix tools failed"
    [[ -f "$AZURITE_JS" ]] || die "npm ci succeeded but $AZURITE_JS is missing"
}

start() {
    local pid
    if pid="$(running_pid)"; then
        echo "azurite.sh: already running (pid $pid)" >&2
        return
    fi
    for port in "$BLOB_PORT" "$QUEUE_PORT" "$TABLE_PORT"; do
        if port_answers "$port"; then
            die "port $HOST:$port is already in use by another process; stop it, or choose other ports with AZURITE_BLOB_PORT / AZURITE_QUEUE_PORT / AZURITE_TABLE_PORT"
        fi
    done
    install
    mkdir -p "$STATE_DIR"
    # --inMemoryPersistence cannot be combined with --location; the working
    # directory must still be writable for Azurite's small state files.
    (
        cd "$STATE_DIR"
        exec nohup node "$AZURITE_JS" \
            --silent \
            --inMemoryPersistence \
            --skipApiVersionCheck \
            --disableTelemetry \
            --blobHost "$HOST" --blobPort "$BLOB_PORT" \
            --queueHost "$HOST" --queuePort "$QUEUE_PORT" \
            --tableHost "$HOST" --tablePort "$TABLE_PORT" \
            </dev/null >"$LOG_FILE" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + TIMEOUT))
    for port in "$BLOB_PORT" "$QUEUE_PORT" "$TABLE_PORT"; do
        until port_answers "$port"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                rm -f "$PID_FILE"
                echo "azurite.sh: Azurite exited during start-up; its log ($LOG_FILE):" >&2
                tail -n 30 "$LOG_FILE" >&2 || true
                exit 1
            fi
            if ((SECONDS >= deadline)); then
                echo "azurite.sh: Azurite (pid $pid) did not answer on $HOST:$port within ${TIMEOUT}s (AZURITE_START_TIMEOUT); stopping it. Its log:" >&2
                tail -n 30 "$LOG_FILE" >&2 || true
                stop
                exit 1
            fi
            sleep 0.2
        done
    done
    echo "azurite.sh: Azurite running (pid $pid): blob $HOST:$BLOB_PORT, queue $HOST:$QUEUE_PORT, table $HOST:$TABLE_PORT" >&2
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        echo "azurite.sh: not running" >&2
        return
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "azurite.sh: pid $pid did not stop within 5s; sending SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    echo "azurite.sh: stopped (pid $pid)" >&2
}

status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running (pid $pid): blob $HOST:$BLOB_PORT, queue $HOST:$QUEUE_PORT, table $HOST:$TABLE_PORT"
    else
        echo "not running"
        exit 3
    fi
}

print_env() {
    local cs="DefaultEndpointsProtocol=http;AccountName=$DEV_ACCOUNT;AccountKey=$DEV_KEY"
    cs+=";BlobEndpoint=http://$HOST:$BLOB_PORT/$DEV_ACCOUNT"
    cs+=";QueueEndpoint=http://$HOST:$QUEUE_PORT/$DEV_ACCOUNT"
    cs+=";TableEndpoint=http://$HOST:$TABLE_PORT/$DEV_ACCOUNT;"
    echo "export AZURE_STORAGE_CONNECTION_STRING='$cs'"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
env) print_env ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
