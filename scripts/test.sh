#!/usr/bin/env bash
# scripts/test.sh: Plinth's one test entry point (CI runs it through .ci/run).
#
# What it does, in order:
#   1. Makes sure PostgreSQL, Redis and RabbitMQ are installed (installs the
#      Debian packages when it is allowed to; see "Installing" below).
#   2. Starts one private instance of each engine inside a single temporary
#      directory, bound to 127.0.0.1 on free ports picked for this run, so
#      that two runs on one machine never collide.
#   3. Exports the connection URLs for the tests:
#        PLINTH_TEST_POSTGRES_URL  postgres://plinth@127.0.0.1:PORT/plinth_test
#        PLINTH_TEST_REDIS_URL     redis://127.0.0.1:PORT
#        PLINTH_TEST_REDIS_PORT    PORT (same port as in the URL)
#        PLINTH_TEST_AMQP_URL      amqp://guest:guest@127.0.0.1:PORT/%2f
#        PLINTH_TEST_REQUIRE_ENGINES=1  (tests fail, not skip, when an
#                                        engine is unreachable)
#   4. Runs cargo fmt --check, clippy -D warnings and the whole test suite
#      (cargo-nextest when installed, otherwise cargo test).
#   5. Stops every engine and deletes the temporary directory on exit, also
#      when a step fails or the run is interrupted (Ctrl-C).
#
# Usage:
#   scripts/test.sh                        fmt + clippy + all tests
#   scripts/test.sh -- ARGS...             same, ARGS go to the test runner
#                                          (e.g. a test name filter; with
#                                          plain cargo test, libtest options
#                                          need their own --: -- NAME -- --nocapture)
#   scripts/test.sh --engines-only -- CMD...
#                                          start the engines, run CMD with
#                                          the variables above, stop them;
#                                          without CMD an interactive shell
#                                          is started instead.
#
# Environment:
#   PLINTH_TEST_ONLY_ENGINES=1  same as --engines-only
#   PLINTH_TEST_NO_INSTALL=1    never install packages; fail if one is missing
#   CARGO_TARGET_DIR            honoured as set; never set by this script
#
# Installing: packages are installed with apt-get only when running as root
# or with passwordless sudo, and PLINTH_TEST_NO_INSTALL is not 1. If an engine
# is missing and cannot be installed the script fails: nothing that needs an
# engine is silently skipped.

set -euo pipefail

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

log() { printf '[test.sh] %s\n' "$*" >&2; }
die() { printf '[test.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch with sub-second precision (bash 5 builtin).
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }

# elapsed START -> "12.3s"
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

# step NAME CMD...: runs CMD (in this shell, so that set -e applies inside
# it), printing NAME and how long it took. If CMD fails, set -e ends the
# script and the EXIT trap reports the failed step.
step() {
    CURRENT_STEP=$1
    STEP_START=$(now)
    shift
    log "==> ${CURRENT_STEP}"
    "$@"
    log "<== ${CURRENT_STEP}: ok ($(elapsed "$STEP_START"))"
    STEP_TIMES+=("${CURRENT_STEP%%:*} $(elapsed "$STEP_START")")
    CURRENT_STEP=''
}
CURRENT_STEP=''
STEP_TIMES=()

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

ENGINES_ONLY=${PLINTH_TEST_ONLY_ENGINES:-0}
while [[ $# -gt 0 ]]; do
    case $1 in
        --engines-only) ENGINES_ONLY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown argument '$1' (use -- before test runner arguments; see --help)" ;;
    esac
done
EXTRA_ARGS=("$@") # test runner arguments, or the command in --engines-only

# Everything runs from the repository root.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

# ---------------------------------------------------------------------------
# Privileges: as root the engines run as their own system users (PostgreSQL
# refuses to run as root); as anyone else they run as the current user.
# ---------------------------------------------------------------------------

CAN_INSTALL=0
AS_ROOT=()     # prefix for commands that need root (apt-get)
AS_POSTGRES=() # prefix for commands run as the PostgreSQL server's user
AS_RABBITMQ=() # prefix for commands run as the RabbitMQ server's user
if [[ $EUID -eq 0 ]]; then
    CAN_INSTALL=1
    AS_POSTGRES=(runuser -u postgres --)
    AS_RABBITMQ=(runuser -u rabbitmq --)
elif sudo -n true 2>/dev/null; then
    CAN_INSTALL=1
    AS_ROOT=(sudo -n)
fi
if [[ ${PLINTH_TEST_NO_INSTALL:-0} == 1 ]]; then CAN_INSTALL=0; fi

# ---------------------------------------------------------------------------
# Cleanup: set up before anything is installed or started
# ---------------------------------------------------------------------------

# What the cleanup has to undo; set as things are created and started.
RUN_DIR=''
PG_STARTED=0
REDIS_STARTED=0
RABBIT_PGID=''
EPMD_PID=''

# wait_gone PID SECONDS: wait until the process PID has exited.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# pid_from FILE: first line of a pid file, if any.
pid_from() { [[ -f $1 ]] && head -n1 "$1" | tr -dc 0-9; }

stop_postgres() {
    local pid
    pid=$(pid_from "$RUN_DIR/pg/data/postmaster.pid" || true)
    (cd "$RUN_DIR/pg" && "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg/data" stop -m fast -w -t 30) >/dev/null 2>&1 || true
    if [[ -n $pid ]] && ! wait_gone "$pid" 5; then
        log "postgres did not stop, killing pid ${pid}"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_redis() {
    local pid
    pid=$(pid_from "$RUN_DIR/redis/redis.pid" || true)
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    if [[ -n $pid ]] && ! wait_gone "$pid" 5; then
        log "redis did not stop, killing pid ${pid}"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_rabbitmq() {
    # SIGTERM makes RabbitMQ shut down cleanly (the rabbitmq-server script
    # and the Erlang VM both handle it), and is quicker than rabbitmqctl.
    # RabbitMQ was started in its own process group (setsid, below), so this
    # reaches this run's processes only, never another run's RabbitMQ.
    kill -TERM -- "-$RABBIT_PGID" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while pgrep -g "$RABBIT_PGID" >/dev/null && ((SECONDS < deadline)); do
        sleep 0.1
    done
    # Whatever is left: a VM that hung, or helpers that run in a session of
    # their own (erl_child_setup, inet_gethost). Only this run's RabbitMQ
    # processes have HOME=$RABBIT_DIR in their environment.
    local pids
    pids=$({
        pgrep -g "$RABBIT_PGID"
        grep -lzxF "HOME=$RABBIT_DIR" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3
    } | sort -u)
    if [[ -n $pids ]]; then
        log "rabbitmq left processes behind, killing them:"
        # shellcheck disable=SC2086 # a list of pids
        ps -o pid=,args= -p "$(echo $pids | tr ' ' ,)" >&2 || true
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
}

cleanup() {
    local status=$?
    set +e # cleanup must run to the end whatever fails
    trap - EXIT INT TERM HUP
    local start stoppers=()
    start=$(now)
    if [[ -n $CURRENT_STEP ]]; then
        log "<== ${CURRENT_STEP}: FAILED with exit code ${status} ($(elapsed "$STEP_START"))"
    fi
    # Stop the engines in parallel; wait for exactly these background jobs
    # (a bare `wait` would also wait for epmd and never return).
    if [[ -n $RABBIT_PGID ]]; then stop_rabbitmq & stoppers+=($!); fi
    if [[ $REDIS_STARTED == 1 ]]; then stop_redis & stoppers+=($!); fi
    if [[ $PG_STARTED == 1 ]]; then stop_postgres & stoppers+=($!); fi
    if ((${#stoppers[@]} > 0)); then wait "${stoppers[@]}"; fi
    # epmd holds no state: it goes last, once RabbitMQ no longer needs it.
    if [[ -n $EPMD_PID ]]; then kill -KILL "$EPMD_PID" 2>/dev/null; wait "$EPMD_PID" 2>/dev/null; fi
    if [[ -n $RUN_DIR ]]; then
        rm -rf "$RUN_DIR"
        log "engines stopped, ${RUN_DIR} removed ($(elapsed "$start"))"
    fi
    # One line only: the test runner's summary stays near the end of the log.
    if ((${#STEP_TIMES[@]} > 0)); then
        log "timings: $(printf '%s, ' "${STEP_TIMES[@]}" | sed 's/, $//')"
    fi
    exit "$status"
}
trap cleanup EXIT
# Make signals go through the EXIT trap too (exit codes as a shell would).
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# 1. Installing the engines
# ---------------------------------------------------------------------------

# PostgreSQL's server binaries are not on PATH on Debian; find the bin
# directory of the installed server (15 first, else the newest one).
find_pg_bin() {
    local initdb
    if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    initdb=$(dpkg -L postgresql-15 2>/dev/null | grep '/bin/initdb$' | head -n1 || true)
    if [[ -z $initdb ]]; then
        initdb=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | grep -v '\*' | sort -V | tail -n1 || true)
    fi
    [[ -n $initdb ]] && dirname "$initdb"
    return 0
}

# RabbitMQ's own scripts (the /usr/sbin ones are a wrapper that insists on
# running as root or rabbitmq and su's around; we call the real ones).
RABBIT_BIN=/usr/lib/rabbitmq/bin

missing_packages() {
    local missing=()
    [[ -n $(find_pg_bin) ]] && command -v psql >/dev/null || missing+=(postgresql-15)
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
    [[ -x $RABBIT_BIN/rabbitmq-server ]] && command -v epmd >/dev/null || missing+=(rabbitmq-server)
    echo "${missing[@]}"
}

install_engines() {
    local missing
    missing=$(missing_packages)
    if [[ -z $missing ]]; then
        log "engines already installed"
        return 0
    fi
    if [[ $CAN_INSTALL != 1 ]]; then
        die "missing packages: ${missing}. Install them (apt-get install ${missing}), or run this script as root or with passwordless sudo and without PLINTH_TEST_NO_INSTALL=1"
    fi
    log "installing: ${missing}"
    # Installing does not start system services on these machines
    # (policy-rc.d denies it); we start our own instances below anyway.
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086 # $missing is a list of package names
    "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
    missing=$(missing_packages)
    [[ -z $missing ]] || die "still missing after apt-get install: ${missing}"
}

step "install engines" install_engines

PG_BIN=$(find_pg_bin)

# ---------------------------------------------------------------------------
# 2. One temporary directory for the run, one free port per listener
# ---------------------------------------------------------------------------

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/plinth-test.XXXXXX")
# The engines run as other users when we are root: let them reach their
# own subdirectories (which only they can write).
chmod 755 "$RUN_DIR"

# Free ports: bind all of them at once to 127.0.0.1:0 so the kernel hands out
# distinct unused ports, then release them for the engines to take.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}
read -r PG_PORT REDIS_PORT AMQP_PORT RABBIT_DIST_PORT RABBIT_CTL_PORT EPMD_PORT < <(free_ports 6)

# show_log FILE: the end of an engine's log, when it failed to start.
show_log() {
    if [[ -f $1 ]]; then
        log "last lines of $1:"
        tail -n 40 "$1" >&2 || true
    fi
}

# ---------------------------------------------------------------------------
# 3. Starting the engines
# ---------------------------------------------------------------------------

start_postgres() {
    local dir=$RUN_DIR/pg
    mkdir -p "$dir"
    if [[ $EUID -eq 0 ]]; then chown postgres:postgres "$dir"; fi
    # cd: the postgres user may not be allowed into the current directory.
    # --no-sync only skips flushing initdb's own files (the cluster is thrown
    # away anyway); the server keeps fsync and synchronous_commit on.
    (
        cd "$dir" &&
            "${AS_POSTGRES[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U plinth --no-sync \
                --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
    ) || { show_log "$dir/initdb.log"; die "initdb failed"; }
    PG_STARTED=1
    (
        cd "$dir" &&
            "${AS_POSTGRES[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
                -o "-p $PG_PORT -k '$dir' -c listen_addresses=127.0.0.1" start >/dev/null
    ) || { show_log "$dir/postgres.log"; die "postgres did not start"; }
    local deadline=$((SECONDS + 30))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do
        ((SECONDS < deadline)) || { show_log "$dir/postgres.log"; die "postgres not ready"; }
        sleep 0.2
    done
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U plinth plinth_test
}

start_redis() {
    local dir=$RUN_DIR/redis
    mkdir -p "$dir"
    REDIS_STARTED=1
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" \
        --save "" --appendonly no --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    local deadline=$((SECONDS + 30))
    until [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
        ((SECONDS < deadline)) || { show_log "$dir/redis.log"; die "redis not ready"; }
        sleep 0.1
    done
}

# RabbitMQ keeps all of its state under $RUN_DIR/rabbitmq. It runs as the
# rabbitmq user when we are root, so that directory belongs to rabbitmq.
# Isolation from other runs (and from a system RabbitMQ):
#   - a unique node name and distribution port,
#   - our own epmd (Erlang's node name server) on its own port, so a second
#     run neither shares nor kills the first run's epmd,
#   - our own Erlang cookie (HOME points into the run directory),
#   - distribution listeners bound to 127.0.0.1 only.
RABBIT_NODE=plinth-test-${AMQP_PORT}@localhost
RABBIT_DIR=$RUN_DIR/rabbitmq
RABBIT_ENV=(
    HOME="$RABBIT_DIR"
    ERL_EPMD_PORT="$EPMD_PORT"
    RABBITMQ_NODENAME="$RABBIT_NODE"
    RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
    RABBITMQ_CTL_DIST_PORT_MIN="$RABBIT_CTL_PORT"
    RABBITMQ_CTL_DIST_PORT_MAX="$RABBIT_CTL_PORT"
    RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq"
    RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
    RABBITMQ_MNESIA_DIR="$RABBIT_DIR/mnesia/$RABBIT_NODE"
    RABBITMQ_FEATURE_FLAGS_FILE="$RABBIT_DIR/feature_flags"
    RABBITMQ_PLUGINS_EXPAND_DIR="$RABBIT_DIR/plugins-expand"
    RABBITMQ_PID_FILE="$RABBIT_DIR/rabbitmq.pid"
    RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
    RABBITMQ_LOGS="$RABBIT_DIR/log/rabbit.log"
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
)

# rabbitmqctl_run ARGS...: rabbitmqctl against this run's node.
rabbitmqctl_run() {
    (cd "$RABBIT_DIR" && "${AS_RABBITMQ[@]}" env "${RABBIT_ENV[@]}" \
        "$RABBIT_BIN/rabbitmqctl" -n "$RABBIT_NODE" "$@")
}

launch_rabbitmq() {
    local dir=$RABBIT_DIR
    mkdir -p "$dir/log" "$dir/mnesia"
    : >"$dir/rabbitmq-env.conf" # empty: ignore /etc/rabbitmq/rabbitmq-env.conf
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:${AMQP_PORT}
loopback_users = none
EOF
    echo '[].' >"$dir/enabled_plugins"
    # A fresh Erlang cookie, written before the server and rabbitmqctl could
    # race to create one each.
    python3 -c 'import secrets, string; print("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)), end="")' \
        >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    if [[ $EUID -eq 0 ]]; then chown -R rabbitmq:rabbitmq "$dir"; fi

    # Our own epmd, in the background so that we know its pid.
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >"$dir/log/epmd.log" 2>&1 &
    EPMD_PID=$!
    local deadline=$((SECONDS + 10))
    until ERL_EPMD_PORT=$EPMD_PORT epmd -names >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { show_log "$dir/log/epmd.log"; die "epmd did not start"; }
        sleep 0.1
    done

    # The server, in the background in a new session (setsid), so that its
    # whole process group can be found and stopped, and Ctrl-C in the
    # terminal reaches only this script. This only works because a script
    # has no job control: setsid then runs in place, and $! is the pid and
    # process group id of the server.
    (
        cd "$dir"
        exec setsid "${AS_RABBITMQ[@]}" env "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-server"
    ) </dev/null >"$dir/log/startup.log" 2>&1 &
    RABBIT_PGID=$!
}

# RabbitMQ takes several seconds to boot: PostgreSQL and Redis are started
# meanwhile, and then we wait for it here.
wait_rabbitmq() {
    local dir=$RABBIT_DIR deadline=$((SECONDS + 120))
    # Cheap check first: the AMQP listener opens near the end of the boot.
    # Then rabbitmqctl (which takes a second per call) confirms it.
    until (exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null &&
        rabbitmqctl_run -q await_startup --timeout 30 >/dev/null 2>&1; do
        if ! kill -0 "$RABBIT_PGID" 2>/dev/null; then
            show_log "$dir/log/startup.log"
            show_log "$dir/log/rabbit.log"
            die "rabbitmq-server exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_log "$dir/log/startup.log"
            show_log "$dir/log/rabbit.log"
            die "rabbitmq did not start within 120s"
        fi
        sleep 0.2
    done
}

ENGINES_START=$(now)
step "launch rabbitmq" launch_rabbitmq
step "start postgres" start_postgres
step "start redis" start_redis
step "wait for rabbitmq" wait_rabbitmq
log "engines started in $(elapsed "$ENGINES_START")"

export PLINTH_TEST_POSTGRES_URL="postgres://plinth@127.0.0.1:${PG_PORT}/plinth_test"
export PLINTH_TEST_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}"
export PLINTH_TEST_REDIS_PORT="$REDIS_PORT"
export PLINTH_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:${AMQP_PORT}/%2f"
export PLINTH_TEST_REQUIRE_ENGINES=1

log "run directory:  ${RUN_DIR}"
log "postgres:       ${PLINTH_TEST_POSTGRES_URL}   (logs: ${RUN_DIR}/pg/postgres.log)"
log "redis:          ${PLINTH_TEST_REDIS_URL}"
log "rabbitmq:       ${PLINTH_TEST_AMQP_URL}   (node ${RABBIT_NODE}, epmd port ${EPMD_PORT})"
log "CARGO_TARGET_DIR: ${CARGO_TARGET_DIR:-(default)}"

# ---------------------------------------------------------------------------
# 5. The checks and tests (or the given command)
# ---------------------------------------------------------------------------

if [[ $ENGINES_ONLY == 1 ]]; then
    if ((${#EXTRA_ARGS[@]} == 0)); then
        EXTRA_ARGS=("${SHELL:-bash}")
    fi
    label="command: ${EXTRA_ARGS[*]}"
    ((${#label} <= 60)) || label="${label:0:57}..."
    # Not exec: the EXIT trap must still stop the engines afterwards.
    step "$label" "${EXTRA_ARGS[@]}"
    exit 0
fi

step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests, so cargo test runs them, first: the last
    # lines of the log are then nextest's summary of the whole suite. The
    # runner arguments (maybe nextest-specific) are not passed to it.
    step "cargo test --doc" cargo test --workspace --doc --locked
    step "cargo nextest run" cargo nextest run --workspace --locked --no-fail-fast "${EXTRA_ARGS[@]}"
else
    step "cargo test" cargo test --workspace --locked "${EXTRA_ARGS[@]}"
fi
