#!/usr/bin/env bash
# Takes the README's capture of `tamizdat chat`: a relay on 127.0.0.1:18443, three people, a
# group, a reply, a reaction, a file and a disappearing timer, then the chat screen in a
# 100x30 tmux terminal. Needs tmux and python3. Usage: contrib/tui-capture.sh [OUT.txt]
set -euo pipefail
OUT=$(realpath -m "${1:-tui-capture.txt}")
cargo build -q -p tamizdat
T=$(realpath target/debug/tamizdat)
D=$(mktemp -d /tmp/cap.XXXX); cd $D
export TAMIZDAT_PASSPHRASE='capture only'
$T relay serve --data ./relay --listen 127.0.0.1:18443 > relay.link 2>relay.log &
RP=$!
sleep 2
RELAY=$(head -1 relay.link)
$T --home alisa init --name "Alisa" --relay "$RELAY" >/dev/null
$T --home bohdan init --name "Bohdan" --relay "$RELAY" >/dev/null
$T --home vera init --name "Vera" --relay "$RELAY" >/dev/null
I=$($T --home alisa invite | head -1); $T --home bohdan accept "$I" >/dev/null
I=$($T --home alisa invite | head -1); $T --home vera accept "$I" >/dev/null
$T --home alisa sync >/dev/null; $T --home bohdan sync >/dev/null; $T --home vera sync >/dev/null
$T --home alisa group create "Book club" >/dev/null
$T --home alisa group add "Book club" Bohdan Vera >/dev/null
$T --home bohdan sync >/dev/null; $T --home vera sync >/dev/null
$T --home vera send "Book club" "Chapter 4 tonight? I finished it on the train." >/dev/null
$T --home bohdan send Alisa "Did the new relay link work for you?" >/dev/null
$T --home alisa sync >/dev/null
ID=$($T --home alisa messages Bohdan --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
$T --home alisa send Bohdan "Yes: DNS was poisoned again, but the IP endpoint got through." --reply-to $ID >/dev/null
$T --home bohdan sync >/dev/null
ID2=$($T --home bohdan messages Alisa --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
$T --home bohdan react Alisa $ID2 "👍" >/dev/null
head -c 300000 /dev/urandom > leaflet.pdf
$T --home bohdan send Alisa --file leaflet.pdf "the leaflet for Saturday" >/dev/null
$T --home bohdan expire Alisa 1d >/dev/null
$T --home bohdan send Alisa "Timer is on: these go away after a day." >/dev/null
$T --home alisa sync >/dev/null
$T --home bohdan sync >/dev/null
tmux -L cap kill-server 2>/dev/null || true
tmux -L cap new-session -d -s t -x 100 -y 30 "TAMIZDAT_PASSPHRASE='capture only' TERM=xterm-256color $T --home alisa chat"
sleep 4
tmux -L cap send-keys -t t Down; sleep 3
tmux -L cap capture-pane -p -t t > "$OUT"
tmux -L cap send-keys -t t C-q; sleep 1
tmux -L cap kill-server 2>/dev/null || true
kill $RP
rm -rf "$D"
cat "$OUT"
