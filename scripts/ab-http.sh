#!/usr/bin/env bash
# A/B of two `plinth` binaries on the HTTP path.
#
#   scripts/ab-http.sh BINARY_A BINARY_B [ROUNDS]
#
# Starts `BINARY_A serve` and `BINARY_B serve` side by side on free
# loopback ports (enforced auth, fresh data directories, JSON logs at info
# to files), and one bare axum server (`BINARY_A bench bare-server`). Each
# round drives A, then B, with `plinth bench http --target ... --bare ...`
# (5 s measured, 1 s warm-up; DURATION overrides the 5 s) and prints, per
# binary, the throughput of every target, whoami's ratio to the bare
# handler, and the server's CPU per request (user + system time from
# /proc, over the health and whoami requests of the round, warm-ups
# included). Alternating the two binaries within each round spreads the
# machine's slow and fast moments over both. Needs python3.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 BINARY_A BINARY_B [ROUNDS]" >&2
    exit 2
fi
BINARY_A=$(realpath "$1")
BINARY_B=$(realpath "$2")
ROUNDS=${3:-3}
DURATION=${DURATION:-5s}
WARMUP=1s

WORK_DIR=$(mktemp -d)
CHILDREN=()
stop_children() {
    for child in "${CHILDREN[@]}"; do
        kill "$child" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK_DIR"
}
trap stop_children EXIT

ADMIN_KEY=$(python3 -c 'import secrets; print("plinthk_ab_" + secrets.token_hex(24))')
read -r BARE_PORT PORT_A PORT_B < <(python3 - <<'PY'
import socket
sockets = [socket.socket() for _ in range(3)]
for candidate in sockets:
    candidate.bind(("127.0.0.1", 0))
print(*[candidate.getsockname()[1] for candidate in sockets])
PY
)

start_serve() { # binary port name
    PLINTH_AUTH__MODE=enforced PLINTH_AUTH__BOOTSTRAP_ADMIN_KEY="$ADMIN_KEY" PLINTH_LOG__FORMAT=json \
        "$1" serve --listen "127.0.0.1:$2" --data-dir "$WORK_DIR/$3-data" --log-level info \
        >/dev/null 2>"$WORK_DIR/$3.log" &
    CHILDREN+=($!)
}

"$BINARY_A" bench bare-server --listen "127.0.0.1:$BARE_PORT" >/dev/null 2>&1 &
CHILDREN+=($!)
start_serve "$BINARY_A" "$PORT_A" a
PID_A=${CHILDREN[-1]}
start_serve "$BINARY_B" "$PORT_B" b
PID_B=${CHILDREN[-1]}
sleep 3

cpu_ticks() { # pid: user + system time in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}

measure() { # label pid port
    local before after
    before=$(cpu_ticks "$2")
    "$BINARY_A" bench http --target "http://127.0.0.1:$3" --api-key "$ADMIN_KEY" \
        --bare "http://127.0.0.1:$BARE_PORT/bare" --duration "$DURATION" --warmup "$WARMUP" \
        --rounds 1 --json >"$WORK_DIR/$1.json" 2>/dev/null
    after=$(cpu_ticks "$2")
    python3 - "$1" "$before" "$after" "$(getconf CLK_TCK)" "$WORK_DIR/$1.json" <<'PY'
import json, sys
label, before, after, ticks_per_second, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
report = json.load(open(path))
# The server's CPU covers warm-ups too: scale each pass's measured requests up.
loaded, unloaded = report["loaded_pass"], report["unloaded_pass"]
measured_per_round = loaded["measured_seconds_per_target"] / loaded["rounds"]
loaded_scale = 1 + loaded["warmup_seconds_per_round"] / measured_per_round
unloaded_scale = 1 + unloaded["warmup_seconds"] / unloaded["measured_seconds"]
served = 0.0
throughputs = []
bare = whoami = None
for row in loaded["measurements"]:
    throughputs.append(f"{row['target']}:{row['throughput_per_second']:.0f}")
    if row["target"] != "bare":
        served += row["requests"] * loaded_scale
    if row["target"] == "bare":
        bare = row["throughput_per_second"]
    if row["target"] == "whoami":
        whoami = row["throughput_per_second"]
for row in unloaded["measurements"]:
    if row["target"] != "bare":
        served += row["requests"] * unloaded_scale
cpu_us_per_request = (after - before) / ticks_per_second * 1e6 / max(served, 1)
print(label, " ".join(throughputs), f"whoami/bare={whoami / bare:.2f}", f"srv_cpu_us/req={cpu_us_per_request:.1f}")
PY
}

for round in $(seq "$ROUNDS"); do
    measure "A$round" "$PID_A" "$PORT_A"
    measure "B$round" "$PID_B" "$PORT_B"
done
