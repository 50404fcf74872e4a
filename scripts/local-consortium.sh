#!/usr/bin/env bash
# Starts a local consortium of N real primiad processes on 127.0.0.1, for
# watching one: builds primiad, generates N identity keys, a roster and N
# configs in a temporary directory, starts the daemons, shows their status
# every few seconds, and stops them all on Ctrl-C (or after ROUNDS rounds).
#
#   scripts/local-consortium.sh N [ROUNDS]
#
# N: members (at least 3: the threshold rule needs 2t > N + 1).
# ROUNDS: rounds to run, 0 (default) runs until Ctrl-C.
# Environment: PRIMIA_PARAMS (test vector length, default 100000),
# PRIMIA_KEEP=1 keeps the directory afterwards, RUST_LOG for the daemons'
# logs (default info), CARGO_TARGET_DIR as for cargo, PRIMIA_BIN a primiad
# binary to use instead of building one.
#
# When the daemons stop by themselves (after ROUNDS rounds), it prints each
# one's exit status and latest model, and the last lines of the log of any
# that failed.
set -euo pipefail

usage() {
    echo "usage: $0 N [ROUNDS]   (N >= 3 members, ROUNDS 0 = until Ctrl-C)" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
n=$1
rounds=${2:-0}
[[ $n =~ ^[0-9]+$ && $n -ge 3 && $n -le 100 ]] || usage
[[ $rounds =~ ^[0-9]+$ ]] || usage
params=${PRIMIA_PARAMS:-100000}

root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${PRIMIA_BIN:-} ]]; then
    bin=$PRIMIA_BIN
else
    echo "building primiad..." >&2
    cargo build --release -p primiad --bin primiad --manifest-path "$root/Cargo.toml" >&2
    bin=${CARGO_TARGET_DIR:-$root/target}/release/primiad
fi
[[ -x $bin ]] || { echo "primiad not found at $bin" >&2; exit 1; }

dir=$(mktemp -d -t primia-consortium.XXXXXX)
pids=()

cleanup() {
    trap - INT TERM EXIT
    echo >&2
    echo "stopping ${#pids[@]} daemons..." >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${PRIMIA_KEEP:-0} == 1 ]]; then
        echo "kept $dir" >&2
    else
        rm -rf "$dir"
    fi
}
trap cleanup INT TERM EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "consortium of $n members in $dir" >&2
{
    echo 'consortium = "local"'
    echo 'threshold = "majority"'
} > "$dir/roster.toml"
for ((i = 0; i < n; i++)); do
    home=$dir/m$i
    mkdir -p "$home"
    peer=$("$bin" keygen --out "$home/identity.key" 2>/dev/null)
    port=$(free_port)
    "$bin" roster entry --key "$home/identity.key" --name "m$i" \
        --address "/ip4/127.0.0.1/tcp/$port" >> "$dir/roster.toml"
    cat > "$home/primiad.toml" <<TOML
roster = "../roster.toml"
key = "identity.key"
storage_dir = "state"

[network]
listen = ["/ip4/127.0.0.1/tcp/$port"]

[round]
collect_ms = 2000
leader_silence_ms = 6000
rounds = $rounds
pause_ms = 1000

[training]
mode = "test-vectors"
vector_len = $params
TOML
    echo "  m$i  $peer  127.0.0.1:$port" >&2
done
"$bin" roster check "$dir/roster.toml" >&2

for ((i = 0; i < n; i++)); do
    RUST_LOG=${RUST_LOG:-info} "$bin" run --config "$dir/m$i/primiad.toml" \
        2> "$dir/m$i/primiad.log" &
    pids+=($!)
done
echo "started; logs in $dir/m*/primiad.log; Ctrl-C stops them" >&2

while true; do
    sleep 3
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=$((running + 1)); done
    if [[ $running -eq 0 ]]; then
        echo "all daemons have stopped:" >&2
        for ((i = 0; i < n; i++)); do
            code=0
            wait "${pids[$i]}" 2>/dev/null || code=$?
            # Empty when the daemon made no model (or logs below info).
            model=$(grep -o 'new global model model=[0-9a-f]*' "$dir/m$i/primiad.log" |
                tail -n 1 | sed 's/.*model=//' || true)
            echo "  m$i  exit $code  latest model ${model:-(none in its log)}" >&2
            if [[ $code -ne 0 ]]; then tail -n 5 "$dir/m$i/primiad.log" | sed 's/^/      /' >&2; fi
        done
        break
    fi
    clear 2>/dev/null || true
    echo "== $(date +%T)  $running of $n running  ($dir)"
    "$bin" status --config "$dir/m0/primiad.toml" || true
    echo
    for ((i = 1; i < n; i++)); do
        "$bin" status --json --config "$dir/m$i/primiad.toml" 2>/dev/null |
            python3 -c 'import json, sys
s = json.load(sys.stdin)
r = s.get("round") or {}
m = s.get("latest_model") or {}
print("%-6s connected %d/%d  round %-5s %-18s model round %-4s %s" % (
    s["name"], len(s["connected"]), s["members"] - 1, r.get("round", "-"),
    r.get("phase", "idle"), m.get("round", "-"), (m.get("hash") or "")[:16]))' ||
            echo "m$i    not answering"
    done
done
