#!/usr/bin/env bash
# Times each user-facing command against a relay on loopback, with the release binary, and
# prints one line per step: what a person waits for at the command line.
# Usage: bench/cli-latency.sh [MESSAGES]   (builds the release binary if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
cargo build --release -p tamizdat --locked -q
T=$PWD/target/release/tamizdat
WORK=$(mktemp -d)
RELAY_PID=
cleanup() { [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
export TAMIZDAT_PASSPHRASE=bench-passphrase

"$T" relay serve --data "$WORK/relay" --listen 127.0.0.1:0 > "$WORK/link" 2>/dev/null &
RELAY_PID=$!
for _ in $(seq 100); do [ -s "$WORK/link" ] && break; sleep 0.05; done
LINK=$(head -1 "$WORK/link")

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
step() { local label=$1; shift; local t0; t0=$(date +%s%N); "$@" > "$WORK/out"; printf '%-34s %7s ms\n' "$label" "$(ms "$t0")"; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%F)"
step "init (Argon2id + new queue)"   "$T" --home "$WORK/a" init --name Alice --relay "$LINK"
"$T" --home "$WORK/b" init --name Bob --relay "$LINK" > /dev/null
step "invite (offline)"              "$T" --home "$WORK/a" invite
INVITE=$(head -1 "$WORK/out")
printf '%-34s %7s bytes\n' "invite link length" "${#INVITE}"
step "accept"                        "$T" --home "$WORK/b" accept "$INVITE"
step "sync (inviter learns contact)" "$T" --home "$WORK/a" sync
step "send one message"              "$T" --home "$WORK/a" send Bob "hello"
step "sync receiving one message"    "$T" --home "$WORK/b" sync
t0=$(date +%s%N)
for i in $(seq "$N"); do "$T" --home "$WORK/a" send Bob "message $i" > /dev/null; done
total=$(ms "$t0")
printf '%-34s %7s ms (%s per send)\n' "send $N messages, one process each" "$total" "$(( total / N ))"
t0=$(date +%s%N)
"$T" --home "$WORK/b" sync --json > "$WORK/sync.json"
total=$(ms "$t0")
got=$(grep -c '"text": "message ' "$WORK/sync.json" || true)
printf '%-34s %7s ms (%s messages received)\n' "sync receiving $N messages" "$total" "$got"
[ "$got" -eq "$N" ] || { echo "expected $N messages, got $got" >&2; exit 1; }
