#!/usr/bin/env bash
# Build, start and stop the local HAPI FHIR JPA server (FHIR R4; in-memory H2 by default, PostgreSQL
# with --spring.datasource.* arguments, see hapi-server/README.md) in hapi-server/
#
#   scripts/hapi.sh build              build build/hapi/hapi-server.jar (skipped when up to date)
#   scripts/hapi.sh start [PORT] [ARG...]
#                                      build if needed, start in the background on PORT (default
#                                      $HAPI_PORT or 8080), wait until /fhir/metadata answers 200
#   scripts/hapi.sh stop [PORT]        stop the server started by `start` on PORT
#   scripts/hapi.sh run [PORT] [ARG...]
#                                      run in the foreground (exec java; used by the test helper
#                                      tests/integration/hapi_server.py), no build, no waiting
#   scripts/hapi.sh status [PORT]      exit 0 if /fhir/metadata on PORT answers 200
#
# ARG... are passed to the server, e.g. --hapi.reuse_cached_search_results_millis=60000
# (see hapi-server/src/main/resources/application.properties for the settings).
#
# Environment:
#   HAPI_PORT            default port (8080)
#   HAPI_START_TIMEOUT   seconds `start` waits for /fhir/metadata (240)
#   HAPI_STOP_TIMEOUT    seconds `stop` waits before SIGKILL (30)
#   HAPI_JAVA_OPTS       JVM options (default: modest heap, fast-startup JIT and GC settings)
#   JAVA, MVN            java / mvn executables
#
# Files (relative to the repo root):
#   build/hapi/hapi-server.jar   the executable fat jar
#   build/hapi/app/              the same jar extracted (faster startup); what start/run launch
#   build/hapi/hapi-PORT.log     server log of `start`
#   build/hapi/hapi-PORT.pid     pid of the java process started by `start`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="$ROOT/hapi-server"
# The forwarding interceptor, compiled into the server from its sources (hapi-server/pom.xml).
PLUGIN_DIR="$ROOT/plugin/hapi"
OUT_DIR="$ROOT/build/hapi"
JAR="$OUT_DIR/hapi-server.jar"
APP_DIR="$OUT_DIR/app"
APP_STAMP="$APP_DIR/.extracted-from"

JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
DEFAULT_JAVA_OPTS="-Xmx768m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Dfile.encoding=UTF-8"
read -r -a JAVA_OPTS <<<"${HAPI_JAVA_OPTS:-$DEFAULT_JAVA_OPTS}"
START_TIMEOUT="${HAPI_START_TIMEOUT:-240}"
STOP_TIMEOUT="${HAPI_STOP_TIMEOUT:-30}"

die() {
    echo "hapi.sh: ERROR: $*" >&2
    exit 1
}

log() {
    echo "hapi.sh: $*" >&2
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"
}

port_arg() {
    local port="${1:-${HAPI_PORT:-8080}}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "invalid port '$port'"
    echo "$port"
}

# 0 when GET http://127.0.0.1:PORT/fhir/metadata returns 200.
metadata_ok() {
    local url="http://127.0.0.1:$1/fhir/metadata"
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -s -o /dev/null -m 10 -w '%{http_code}' "$url" 2>/dev/null || true)" == "200" ]]
    else
        python3 - "$url" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=10).status == 200 else 1)
EOF
    fi
}

# 0 when PID is alive and is a java process running our jar.
is_our_java() {
    local pid="$1"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'hapi-server.jar'
}

jar_up_to_date() {
    [[ -f "$JAR" ]] || return 1
    # Any file under hapi-server/ or plugin/hapi/ (except Maven's target/) newer than the jar means a rebuild.
    local dir
    for dir in "$SRC_DIR" "$PLUGIN_DIR"; do
        [[ -d "$dir" ]] || continue
        [[ -z "$(find "$dir" -path "$dir/target" -prune -o -type f -newer "$JAR" -print -quit)" ]] || return 1
    done
}

app_up_to_date() {
    [[ -f "$APP_DIR/hapi-server.jar" && -f "$APP_STAMP" && ! "$JAR" -nt "$APP_STAMP" ]]
}

extract_app() {
    local tmp="$OUT_DIR/app.tmp.$$"
    rm -rf "$tmp"
    if ! "$JAVA" -Djarmode=tools -jar "$JAR" extract --destination "$tmp" >"$OUT_DIR/extract.log" 2>&1; then
        cat "$OUT_DIR/extract.log" >&2
        rm -rf "$tmp"
        die "extracting $JAR failed"
    fi
    touch "$tmp/.extracted-from"
    rm -rf "$APP_DIR"
    mv "$tmp" "$APP_DIR"
}

do_build() {
    need "$JAVA" "Java 17+ is required"
    mkdir -p "$OUT_DIR"
    # Serialise concurrent builds (e.g. parallel test sessions); fd 9 is closed again afterwards
    # so that a server started by this script does not inherit the lock.
    exec 9>"$OUT_DIR/.build.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    build_locked
    exec 9>&-
}

build_locked() {
    if jar_up_to_date; then
        app_up_to_date || extract_app
        return 0
    fi
    need "$MVN" "Maven 3.8+ is required to build hapi-server/"
    log "building $JAR with Maven (first build downloads dependencies into ~/.m2)"
    local started=$SECONDS
    # (Debian's Maven 3.8 prints stray ANSI resets even with -B -q: strip them.)
    if ! "$MVN" -q -B -Dstyle.color=never -f "$SRC_DIR/pom.xml" -DskipTests package 2>&1 |
        sed -e $'s/\x1b\\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2; then
        die "Maven build of hapi-server/ FAILED (see the output above)"
    fi
    [[ -f "$SRC_DIR/target/hapi-server.jar" ]] || die "Maven finished but $SRC_DIR/target/hapi-server.jar is missing"
    cp "$SRC_DIR/target/hapi-server.jar" "$JAR.tmp.$$"
    mv -f "$JAR.tmp.$$" "$JAR"
    extract_app
    log "built $JAR in $((SECONDS - started))s"
}

do_run() {
    local port
    port="$(port_arg "${1:-}")"
    shift || true
    [[ -f "$APP_DIR/hapi-server.jar" ]] || die "$APP_DIR/hapi-server.jar missing: run 'scripts/hapi.sh build' first"
    cd "$APP_DIR"
    exec "$JAVA" "${JAVA_OPTS[@]}" -jar "$APP_DIR/hapi-server.jar" "--server.port=$port" "$@"
}

do_start() {
    local port
    port="$(port_arg "${1:-}")"
    shift || true
    local pidfile="$OUT_DIR/hapi-$port.pid"
    local logfile="$OUT_DIR/hapi-$port.log"

    if [[ -f "$pidfile" ]] && is_our_java "$(cat "$pidfile")"; then
        if metadata_ok "$port"; then
            log "already running on port $port (pid $(cat "$pidfile"))"
            return 0
        fi
        die "a server from $pidfile (pid $(cat "$pidfile")) is running but not answering; run 'scripts/hapi.sh stop $port'"
    fi
    rm -f "$pidfile"
    if metadata_ok "$port"; then
        die "something else already answers on port $port"
    fi

    do_build
    log "starting HAPI FHIR on port $port (log: $logfile)"
    : >"$logfile"
    (
        cd "$APP_DIR"
        exec "$JAVA" "${JAVA_OPTS[@]}" -jar "$APP_DIR/hapi-server.jar" "--server.port=$port" "$@"
    ) </dev/null >>"$logfile" 2>&1 &
    local pid=$!
    echo "$pid" >"$pidfile"

    local started=$SECONDS
    while true; do
        if metadata_ok "$port"; then
            log "HAPI FHIR is up at http://localhost:$port/fhir (pid $pid, $((SECONDS - started))s)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "HAPI FHIR exited during startup; last log lines:"
            tail -n 40 "$logfile" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        if ((SECONDS - started >= START_TIMEOUT)); then
            log "HAPI FHIR did not answer within ${START_TIMEOUT}s; last log lines:"
            tail -n 40 "$logfile" >&2 || true
            stop_pid "$pid"
            rm -f "$pidfile"
            exit 1
        fi
        sleep 1
    done
}

stop_pid() {
    local pid="$1" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT * 10)); then
            log "pid $pid still alive after ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    # Reap it if it is our child; otherwise wait until it is gone.
    wait "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

do_stop() {
    local port
    port="$(port_arg "${1:-}")"
    local pidfile="$OUT_DIR/hapi-$port.pid"
    if [[ ! -f "$pidfile" ]]; then
        log "not running on port $port (no $pidfile)"
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    if is_our_java "$pid"; then
        log "stopping HAPI FHIR on port $port (pid $pid)"
        stop_pid "$pid"
    else
        log "pid $pid from $pidfile is not running"
    fi
    rm -f "$pidfile"
}

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd="${1:-}"
shift || true
case "$cmd" in
    build) do_build ;;
    start) do_start "$@" ;;
    stop) do_stop "$@" ;;
    run) do_run "$@" ;;
    status)
        port="$(port_arg "${1:-}")"
        metadata_ok "$port"
        ;;
    *) usage ;;
esac
