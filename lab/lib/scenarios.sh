# shellcheck shell=bash
# The scenarios, run against the real tamizdat binary. Alice (client namespace) is censored;
# Bob (peer namespace) never is. Each scenario: reset the censor, apply its rules, maybe give
# Alice another way in (`relay add`), then Alice -> Bob and Bob -> Alice with unique markers
# (timed), then `tamizdat doctor --json` must name what the censor did.

declare -gA SCENARIO_NAME=([1]=baseline [2]=dns-nxdomain [3]=dns-poison [4]="ip-blocked → bridge"
    [5]=sni-block [6]=throttle [7]=freeze [8]=tls-allowlist [9]=probing [10]=obfs4 [11]=socks-only
    [12]=allowlist)
# Seconds allowed for each direction's first message (scaled by LAB_DEADLINE_FACTOR).
declare -gA SCENARIO_DEADLINE=([1]=20 [2]=45 [3]=60 [4]=45 [5]=45 [6]=90 [7]=30 [8]=30 [9]=30
    [10]=60 [11]=30 [12]=45)
FREEZE_MESSAGES=${LAB_FREEZE_MESSAGES:-300}

scenario_name() { printf '%s' "${SCENARIO_NAME[$1]}"; }

# ---------------------------------------------------------------- who talks
# The pair in use: Alice's namespace, store, extra global flags and her name for Bob; Bob's
# namespace, store and his name for Alice. Scenarios 2 and 3 swap in a fresh pair.
use_main_pair() {
    A_NS=client A_HOME=$LAB_WORK/alice A_PEER=Bob A_ARGS=()
    B_NS=peer B_HOME=$LAB_WORK/bob B_PEER=Alice
}

a_tz() { local limit=$1; shift; tz "$A_NS" "$A_HOME" "$limit" "${A_ARGS[@]}" "$@"; }
b_tz() { local limit=$1; shift; tz "$B_NS" "$B_HOME" "$limit" "$@"; }

# contact_named NS HOME WANTED — WANTED if that contact exists, else the newest contact's name.
contact_named() {
    tz "$1" "$2" 30 contacts --json | python3 -c '
import json, sys
try:
    names = [c.get("name") for c in json.load(sys.stdin)]
except ValueError:
    names = []
print(sys.argv[1] if sys.argv[1] in names else (names[-1] if names else ""))' "$3"
}

# pair A_NAME B_NAME A_LINK B_LINK — creates Alice's and Bob's identities (under whatever the
# censor does now) and makes them contacts: Bob invites, Alice accepts, both sync.
pair() {
    local a_name=$1 b_name=$2 a_link=$3 b_link=$4 invite
    a_tz 120 init --name "$a_name" --relay "$a_link" >/dev/null ||
        { FAIL_REASON="$a_name could not init: $(last_error)"; return 1; }
    b_tz 60 init --name "$b_name" --relay "$b_link" >/dev/null ||
        { FAIL_REASON="$b_name could not init: $(last_error)"; return 1; }
    invite=$(b_tz 30 invite | head -1)
    [[ $invite == tamizdat:* ]] || { FAIL_REASON="$b_name printed no invite link: $(last_error)"; return 1; }
    a_tz 120 accept "$invite" --as "$b_name" >/dev/null ||
        { FAIL_REASON="$a_name could not accept the invite: $(last_error)"; return 1; }
    b_tz 60 sync >/dev/null
    a_tz 120 sync >/dev/null
    B_PEER=$(contact_named "$B_NS" "$B_HOME" "$a_name")
    A_PEER=$(contact_named "$A_NS" "$A_HOME" "$b_name")
    [[ -n $A_PEER && -n $B_PEER ]] || { FAIL_REASON="$a_name and $b_name are not contacts after pairing"; return 1; }
    log "paired: $a_name knows $A_PEER, $b_name knows $B_PEER"
}

# The last error line Tamizdat printed, for failure reasons.
last_error() { grep -a '^error:' "$LAB_LOG" | tail -1 | cut -c1-200; }

# ---------------------------------------------------------------- the relay and bridges
start_relay() {
    bg relay relay "$TAMIZDAT_BIN" relay serve --data "$LAB_WORK/relay" --listen 203.0.113.10:443 \
        --public 203.0.113.10:443 --public relay.lab.example:443 --pt obfs4=203.0.113.10:8443
    RELAY_LINK=$(first_line "$LAB_LOGS/relay.out" 60 relay) ||
        die "the relay printed no link (see $LAB_LOGS/relay.err)"
    wait_tcp relay 203.0.113.10 443 20 || die "the relay does not listen on 203.0.113.10:443"
    LINK_IP=$(relay_link --only 203.0.113.10:443) || die "relay link --only 203.0.113.10:443 failed"
    LINK_DOMAIN=$(relay_link --only relay.lab.example:443) || die "relay link --only relay.lab.example:443 failed"
    LINK_FULL=$(relay_link --only 203.0.113.10:443 --only relay.lab.example:443) || die "relay link (full) failed"
}

relay_link() {
    local out
    out=$(in_ns relay "$TAMIZDAT_BIN" relay link --data "$LAB_WORK/relay" "$@" 2>>"$LAB_LOG" | head -1)
    log "relay link $*: $out"
    [[ $out == tamizdat:* ]] && printf '%s\n' "$out"
}

# The obfs4 line appears in the link once the relay's PT server is up.
obfs4_link() {
    local until t
    until=$(deadline_in 30)
    while (( $(now_us) < until )); do
        relay_link --only obfs4 && return 0
        sleep 1
    done
    return 1
}

# start_bridge NAME NS IP — runs `tamizdat bridge serve` there; sets BRIDGE_LINK to the link
# it prints (the relay's link with the bridge listed first).
start_bridge() {
    local name=$1 ns=$2 ip=$3
    bg "$name" "$ns" "$TAMIZDAT_BIN" bridge serve --listen "$ip:443" --relay "$LINK_IP" --public "$ip:443"
    BRIDGE_LINK=$(first_line "$LAB_LOGS/$name.out" 30 "$name") && wait_tcp "$ns" "$ip" 443 10
}

setup_identities() {
    local t0
    t0=$(now_us)
    start_relay
    say "relay up in $(secs_since "$t0") s"
    use_main_pair
    t0=$(now_us)
    pair Alice Bob "$LINK_IP" "$LINK_IP" || die "setting up Alice and Bob failed: $FAIL_REASON"
    say "Alice and Bob are contacts ($(secs_since "$t0") s)"
}

# ---------------------------------------------------------------- scenario steps
setup_begin() { SETUP_T0=$(now_us); }
setup_end() { SETUP_S=$(secs_since "$SETUP_T0"); log "scenario setup took $SETUP_S s"; }

# add_link LINK — Alice learns another way to reach her relay.
add_link() {
    a_tz 30 relay add "$1" >/dev/null || { FAIL_REASON="relay add failed: $(last_error)"; return 1; }
}

# exchange N SECONDS — Alice -> Bob, then Bob -> Alice, each within SECONDS; sets A2B_S/B2A_S.
exchange() {
    local n=$1 secs=$2
    A2B_S=$(deliver "$n" a2b "$secs" a_tz "$A_PEER" b_tz "$B_PEER") || { FAIL_REASON=$A2B_S; A2B_S=; return 1; }
    B2A_S=$(deliver "$n" b2a "$secs" b_tz "$B_PEER" a_tz "$A_PEER") || { FAIL_REASON=$B2A_S; B2A_S=; return 1; }
}

# deliver N TAG SECONDS FROM FROMS-NAME-FOR-TO TO TOS-NAME-FOR-FROM — FROM (a_tz or b_tz)
# sends a unique marker; prints the seconds from the start of the send until TO's client
# shows it, or prints the failure reason and fails.
deliver() {
    local n=$1 tag=$2 secs=$3 from=$4 send_to=$5 to=$6 to_peer=$7 marker until t0 left
    marker="s$n-$tag-$(rand_tag)"
    until=$(deadline_in "$secs")
    t0=$(now_us)
    "$from" "$(secs_left "$until")" send "$send_to" "$marker" >/dev/null
    while :; do
        left=$(secs_left "$until")
        if (( left <= 0 )); then
            echo "$marker not delivered within $(deadline_in_secs "$secs") s; $(last_error)"
            return 1
        fi
        "$to" "$(( left < 60 ? left : 60 ))" sync >/dev/null
        if "$to" 30 messages "$to_peer" --json | grep -qF "$marker"; then
            secs_since "$t0"
            return 0
        fi
        # Whatever the sender could not deliver is still in its outbox; sync retries it.
        left=$(secs_left "$until")
        (( left > 0 )) && "$from" "$(( left < 60 ? left : 60 ))" sync >/dev/null
    done
}
deadline_in_secs() { awk -v s="$1" -v f="${LAB_DEADLINE_FACTOR:-1}" 'BEGIN { printf "%d", s * f }'; }

# doctor [NAME] — runs `tamizdat doctor --json` as Alice; the file is what expect_doctor reads.
doctor() {
    DOCTOR_JSON=$SC_DIR/doctor${1:+-$1}.json
    a_tz 120 doctor --json >"$DOCTOR_JSON"
    log "doctor: $(python3 "$LAB_DIR/labtool.py" doctor summary "$DOCTOR_JSON")"
}

# expect_doctor VERDICT [ENDPOINT-SUBSTRING] — passes if an endpoint (whose name contains the
# substring) has that verdict; without a substring the overall verdict counts too.
expect_doctor() {
    python3 "$LAB_DIR/labtool.py" doctor check "$DOCTOR_JSON" "$1" "${2:-}" && return 0
    FAIL_REASON="doctor: wanted $1${2:+ for $2}; saw $(python3 "$LAB_DIR/labtool.py" doctor summary "$DOCTOR_JSON")"
    return 1
}

# ---------------------------------------------------------------- the scenarios
# Each returns 0 on pass; on failure it sets FAIL_REASON. SETUP_S, A2B_S and B2A_S feed the
# summary line and results.json.

scenario_1() {
    setup_begin; reset_censor; censor_1; setup_end
    exchange 1 "${SCENARIO_DEADLINE[1]}" || return 1
    doctor; expect_doctor ok
}

# 2 and 3: a fresh pair whose only way to the relay is its domain name, so a working message
# proves the client got past the tampered DNS (the main pair's IP literal would bypass DNS).
scenario_dns() {
    local n=$1
    setup_begin; reset_censor; "censor_$n"; setup_end
    A_NS=client A_HOME=$LAB_WORK/alice-s$n A_ARGS=() B_NS=peer B_HOME=$LAB_WORK/bob-s$n
    local t0
    t0=$(now_us)
    pair "Alice$n" "Bob$n" "$LINK_DOMAIN" "$LINK_DOMAIN" || { use_main_pair; return 1; }
    record "$n" pairing_s "$(secs_since "$t0")"
    exchange "$n" "${SCENARIO_DEADLINE[$n]}" && doctor && expect_doctor dns-tampering
    local rc=$?
    use_main_pair
    return $rc
}
scenario_2() { scenario_dns 2; }
scenario_3() { scenario_dns 3; }

scenario_4() {
    local mode rc=0 t0
    t0=$(now_us)
    reset_censor
    start_bridge bridge bridge 198.51.100.10 ||
        { FAIL_REASON="the bridge did not start (see $LAB_LOGS/bridge.err)"; stop bridge; return 1; }
    add_link "$BRIDGE_LINK" || { stop bridge; return 1; }
    local base_setup
    base_setup=$(secs_since "$t0")
    for mode in drop reset; do
        SETUP_T0=$(now_us)
        reset_censor
        "censor_4_$mode"
        setup_end
        [[ $mode == drop ]] && SETUP_S=$(awk -v a="$SETUP_S" -v b="$base_setup" 'BEGIN { printf "%.1f", a + b }')
        local sub_ok=1
        if exchange 4 "${SCENARIO_DEADLINE[4]}" && doctor "$mode" && expect_doctor ip-blocking 203.0.113.10:443 &&
            expect_doctor ok 198.51.100.10; then
            sub_ok=1
        else
            sub_ok=0 rc=1
            FAIL_REASON="$mode: $FAIL_REASON"
        fi
        record 4 "$mode.censor_hits" "$(censor_hits | paste -sd'|')"
        record 4 "$mode.pass" "$sub_ok" "$mode.setup_s" "$SETUP_S" "$mode.a2b_s" "$A2B_S" "$mode.b2a_s" "$B2A_S" \
            "$mode.reason" "$( ((sub_ok)) || echo "$FAIL_REASON")"
        if [[ $mode == drop ]]; then FIRST_A2B=$A2B_S FIRST_B2A=$B2A_S FIRST_SETUP=$SETUP_S; fi
        ((sub_ok)) || break
    done
    stop bridge
    # The summary line shows the drop sub-run; the reset sub-run is in results.json.
    A2B_S=${FIRST_A2B:-} B2A_S=${FIRST_B2A:-} SETUP_S=${FIRST_SETUP:-$SETUP_S}
    return $rc
}

scenario_5() {
    setup_begin; reset_censor; censor_5; add_link "$LINK_FULL" || return 1; setup_end
    exchange 5 "${SCENARIO_DEADLINE[5]}" || return 1
    doctor; expect_doctor sni-blocking relay.lab.example
}

scenario_6() {
    setup_begin; reset_censor; censor_6; setup_end
    exchange 6 "${SCENARIO_DEADLINE[6]}" || return 1
    doctor; expect_doctor throttling
}

# 7: after the usual exchange, Bob sends FREEZE_MESSAGES messages (far more than 16 KB of
# ciphertext), and one `tamizdat sync` by Alice must bring every one of them.
scenario_7() {
    setup_begin; reset_censor; censor_7; setup_end
    exchange 7 "${SCENARIO_DEADLINE[7]}" || return 1
    local tag i t0 failed=0 got
    tag="s7-bulk-$(rand_tag)"
    t0=$(now_us)
    for ((i = 1; i <= FREEZE_MESSAGES; i++)); do
        b_tz 30 send "$B_PEER" "$tag-$(printf %03d "$i") $(head -c 120 /dev/zero | tr '\0' 'x')" >/dev/null || ((failed++))
    done
    log "Bob sent $FREEZE_MESSAGES messages in $(secs_since "$t0") s ($failed send errors)"
    if ((failed)); then b_tz 120 sync >/dev/null; fi
    t0=$(now_us)
    a_tz "$(deadline_in_secs 180)" sync >/dev/null
    record 7 bulk_sync_s "$(secs_since "$t0")" bulk_expected "$FREEZE_MESSAGES"
    got=$(a_tz 60 messages "$A_PEER" --json | grep -oF "$tag-" | wc -l)
    record 7 bulk_received "$got"
    if ((got < FREEZE_MESSAGES)); then
        FAIL_REASON="one sync brought $got of $FREEZE_MESSAGES messages through the freeze"
        return 1
    fi
    doctor; expect_doctor freeze
}

scenario_8() {
    setup_begin; reset_censor; censor_8; setup_end
    exchange 8 "${SCENARIO_DEADLINE[8]}" || return 1
    doctor; expect_doctor ok
}

# 9: the prober watches Alice's first flight to the relay, then probes the relay from the
# censor and from Bob's (unblocked) network; any difference from nginx is a finding.
scenario_9() {
    setup_begin; reset_censor; censor_9; setup_end
    bg capture censor python3 "$LAB_DIR/probe.py" capture --iface "$CLIENT_IF" --src 10.10.1.2 \
        --dst 203.0.113.10:443 --out "$SC_DIR/hello.bin" --timeout 120
    sleep 0.3
    exchange 9 "${SCENARIO_DEADLINE[9]}" || { stop capture; return 1; }
    local i=0
    while alive capture && (( i++ < 25 )); do sleep 0.2; done
    stop capture
    [[ -s $SC_DIR/hello.bin ]] || { FAIL_REASON="the prober saw no first flight from Alice"; return 1; }
    in_ns censor python3 "$LAB_DIR/probe.py" probe --target 203.0.113.10:443 --hello "$SC_DIR/hello.bin" \
        --out "$SC_DIR/probe-censor.json" >>"$LAB_LOG" 2>&1
    in_ns peer python3 "$LAB_DIR/probe.py" probe --target 203.0.113.10:443 --hello "$SC_DIR/hello.bin" \
        --out "$SC_DIR/probe-peer.json" >>"$LAB_LOG" 2>&1
    python3 "$LAB_DIR/probe.py" report "$SC_DIR/probe-censor.json" "$SC_DIR/probe-peer.json" >"$SC_DIR/probe-report.txt"
    local rc=$?
    cat "$SC_DIR/probe-report.txt" >>"$LAB_LOG"
    record 9 probe_findings "$(tail -1 "$SC_DIR/probe-report.txt")"
    if ((rc)); then
        FAIL_REASON="prober: $(grep -v '  ok$' "$SC_DIR/probe-report.txt" | sed -n 2p | tr -s ' ' | cut -c1-160) (table: $SC_DIR/probe-report.txt)"
        return 1
    fi
    doctor; expect_doctor ok
}

scenario_10() {
    setup_begin; reset_censor; censor_10
    local link
    link=$(obfs4_link) || { FAIL_REASON="the relay's link never listed an obfs4 bridge line"; return 1; }
    add_link "$link" || return 1
    setup_end
    exchange 10 "${SCENARIO_DEADLINE[10]}" || return 1
    doctor; expect_doctor tls-blocking 203.0.113.10:443 && expect_doctor ok obfs4
}

scenario_11() {
    setup_begin; reset_censor; censor_11; setup_end
    A_ARGS=(--proxy socks5://192.0.2.108:1080)
    exchange 11 "${SCENARIO_DEADLINE[11]}" && doctor && expect_doctor ok
    local rc=$?
    A_ARGS=()
    return $rc
}

scenario_12() {
    setup_begin; reset_censor; censor_12
    start_bridge allowed-bridge allowed 100.64.0.10 ||
        { FAIL_REASON="the allowlisted bridge did not start (see $LAB_LOGS/allowed-bridge.err)"; stop allowed-bridge; return 1; }
    add_link "$BRIDGE_LINK" || { stop allowed-bridge; return 1; }
    setup_end
    exchange 12 "${SCENARIO_DEADLINE[12]}" && doctor && expect_doctor ip-blocking 203.0.113.10:443 &&
        expect_doctor ok 100.64.0.10
    local rc=$?
    stop allowed-bridge
    return $rc
}

# run_scenario N — runs one scenario, prints its line, records it.
run_scenario() {
    local n=$1 t0 rc status detail
    SC_DIR=$LAB_OUT/s$(printf %02d "$n")
    mkdir -p "$SC_DIR"
    LAB_LOG=$SC_DIR/log.txt
    FAIL_REASON= SETUP_S= A2B_S= B2A_S= FIRST_A2B= FIRST_B2A= FIRST_SETUP=
    use_main_pair
    log "=== scenario $n $(scenario_name "$n")"
    t0=$(now_us)
    "scenario_$n"
    rc=$?
    local hits
    hits=$(censor_hits | paste -sd'|')
    log "censor hits: ${hits:-none}"
    status=PASS
    ((rc)) && status=FAIL
    detail="first message ${A2B_S:-—}${A2B_S:+ s}"
    [[ -n $B2A_S ]] && detail+=", reply $B2A_S s"
    detail+=", setup ${SETUP_S:-—}${SETUP_S:+ s}"
    print_line "$status" "$n" "$(scenario_name "$n")" "$detail" "$( ((rc)) && echo "${FAIL_REASON:-failed}")"
    record "$n" number "$n" name "$(scenario_name "$n")" pass "$((rc ? 0 : 1))" reason "$( ((rc)) && echo "$FAIL_REASON")" \
        setup_s "$SETUP_S" a2b_s "$A2B_S" b2a_s "$B2A_S" total_s "$(secs_since "$t0")" \
        censor_hits "$hits"
    return $rc
}
