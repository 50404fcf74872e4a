#!/usr/bin/env bash
# One federated round over loopback, primia against Flower, in one run on
# this machine: `cargo bench -p primiad --bench round` (secure and plain
# rounds side by side) and Flower 1.42's SecAgg+ and plain FedAvg rounds
# (../shared/peers/flower_secagg_round.py, Ray simulation), for the same
# member count and parameter count. Prints the medians and the ratios; the
# last line is
#
#   round-vs-flower members=N params=D primia_secure_ms=... primia_plain_ms=... flower_secagg_ms=... flower_plain_ms=... secure_speedup=...
#
# Usage: scripts/bench-round-vs-flower.sh [MEMBERS [PARAMS [ROUNDS]]]
# Flower is installed into a virtual environment from PyPI on first use
# ($PRIMIA_FLWR_VENV, default ~/.cache/primia-flwr-venv); the peer script is
# found at $PRIMIA_PEERS or ../shared/peers.
set -euo pipefail
cd "$(dirname "$0")/.."
members=${1:-10}
params=${2:-1000000}
rounds=${3:-8}
venv=${PRIMIA_FLWR_VENV:-$HOME/.cache/primia-flwr-venv}
peers=${PRIMIA_PEERS:-$(cd .. && pwd)/shared/peers}
script="$peers/flower_secagg_round.py"
[ -f "$script" ] || { echo "error: $script not found (set PRIMIA_PEERS)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    echo "installing Flower into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "flwr[simulation]==1.42.*" numpy
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The peer script imports a `contention` module (idle wait and a CPU probe)
# that is not shipped with it; where it is missing, a stand-in that does
# not wait and reports nothing.
if ! (cd "$peers" && "$venv/bin/python" -c 'import contention' 2>/dev/null); then
    cat >"$work/contention.py" <<'PY'
import contextlib
def wait_idle(max_wait_s=0):
    return 0.0
class TreeProbe(contextlib.AbstractContextManager):
    def __exit__(self, *exc):
        return False
    def summary(self, total):
        return {}
PY
fi

echo "== primia: secure and plain rounds, $members members, $params parameters" >&2
ROUND_BENCH_ONLY="$members:$params" ROUND_BENCH_ROUNDS=$((rounds - 1)) \
    cargo bench -q -p primiad --bench round --locked 2>/dev/null | tee "$work/primia.txt" >&2
line=$(grep '^round members=' "$work/primia.txt" | tail -n 1)
secure=$(sed -E 's/.*secure_ms=([0-9.]+).*/\1/' <<<"$line")
plain=$(sed -E 's/.*plain_ms=([0-9.]+).*/\1/' <<<"$line")

flower() {
    (cd "$work" && PYTHONPATH="$work:$peers" "$venv/bin/python" "$script" "$1" "$members" "$params" "$rounds" 2>/dev/null |
        grep '^RESULT' | sed 's/^RESULT //' |
        "$venv/bin/python" -c 'import json,sys; print(round(json.load(sys.stdin)["round_s_median_excl_first"]*1000, 1))')
}
echo "== Flower SecAgg+ and plain FedAvg (median of rounds 2-$rounds)" >&2
fsec=$(flower secaggplus)
fplain=$(flower plain)
echo "flower secaggplus_ms=$fsec plain_ms=$fplain ratio=$(python3 -c "print(f'{$fsec/$fplain:.2f}')")" >&2
speedup=$(python3 -c "print(f'{$fsec/$secure:.2f}')")
echo "round-vs-flower members=$members params=$params primia_secure_ms=$secure primia_plain_ms=$plain flower_secagg_ms=$fsec flower_plain_ms=$fplain secure_speedup=$speedup"
