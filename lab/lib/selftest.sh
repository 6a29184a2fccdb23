# shellcheck shell=bash
# lab/run --selftest: checks the topology and every scenario's censor rules with plain
# sockets (lab/labtool.py), without Tamizdat. Stand-in servers sit where the relay and the
# bridges will be: TLS on 203.0.113.10:443, 198.51.100.10:443 and 100.64.0.10:443 (BULK n /
# SINK n / echo), and raw echo on 203.0.113.10:8443 where obfs4 will listen.

ST_FAILS=()

start_standins() {
    local cert=$LAB_PKI/test.pem key=$LAB_PKI/test.key
    bg stand-relay relay python3 "$LAB_DIR/labtool.py" serve --listen 203.0.113.10:443 --cert "$cert" --key "$key"
    bg stand-obfs4 relay python3 "$LAB_DIR/labtool.py" serve --listen 203.0.113.10:8443
    bg stand-bridge bridge python3 "$LAB_DIR/labtool.py" serve --listen 198.51.100.10:443 --cert "$cert" --key "$key"
    bg stand-allowed allowed python3 "$LAB_DIR/labtool.py" serve --listen 100.64.0.10:443 --cert "$cert" --key "$key"
    wait_tcp relay 203.0.113.10 443 10 && wait_tcp relay 203.0.113.10 8443 10 &&
        wait_tcp bridge 198.51.100.10 443 10 && wait_tcp allowed 100.64.0.10 443 10 ||
        die "self-test servers did not start"
}

# fetch NS ARGS... / dnsq NS ARGS... — one labtool measurement, as a JSON line.
fetch() { local ns=$1; shift; in_ns "$ns" python3 "$LAB_DIR/labtool.py" fetch "$@"; }
dnsq() { local ns=$1; shift; in_ns "$ns" python3 "$LAB_DIR/labtool.py" dns "$@"; }

# check DESCRIPTION JSON PYTHON-EXPRESSION — the expression sees the parsed JSON as d.
check() {
    local desc=$1 json=$2 expr=$3
    if python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$json" "$expr" 2>>"$LAB_LOG"; then
        log "  ok    $desc: $json"
        return 0
    fi
    log "  FAIL  $desc: $json   (wanted: $expr)"
    ST_FAILS+=("$desc: got $json")
    return 1
}

TLS_OK='d["connect"]=="ok" and d["tls"]=="ok"'
BLOCKED='d["connect"]!="ok" or d["received"]==0'
R=203.0.113.10:443

# The uncensored user must never notice the censor.
check_peer_free() {
    check "peer reaches the relay" "$(fetch peer --connect $R --tls --ca "$LAB_PKI/ca.pem" --send 'BULK 100000' --expect 100000)" \
        "$TLS_OK and d['received']==100000"
}

selftest_1() {
    check "client reaches the relay over TLS" "$(fetch client --connect $R --tls --ca "$LAB_PKI/ca.pem" --send 'BULK 50000' --expect 50000)" \
        "$TLS_OK and d['received']==50000"
    check "national DNS answers honestly" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
    check "resolv.conf points at the national DNS" "$(in_ns client python3 -c 'import json,socket; print(json.dumps({"a": socket.gethostbyname("relay.lab.example")}))')" \
        'd["a"]=="203.0.113.10"'
    check "DNS over TCP to the honest resolver" "$(dnsq client --via tcp --server 192.0.2.53 relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
    check "DoH POST" "$(dnsq client --via doh --server https://192.0.2.53/dns-query --ca "$LAB_PKI/ca.pem" relay.lab.example)" \
        'd.get("answers")==["203.0.113.10"]'
    check "DoH GET" "$(dnsq client --via doh --method GET --server https://192.0.2.53/dns-query --ca "$LAB_PKI/ca.pem" allowed.lab.example)" \
        'd.get("answers")==["100.64.0.10"]'
    check "DoH: unknown names are NXDOMAIN" "$(dnsq client --via doh --server https://192.0.2.53/dns-query --ca "$LAB_PKI/ca.pem" nothing.example)" \
        'd.get("rcode")=="NXDOMAIN"'
    check "cover host answers like nginx" "$(fetch client --connect 192.0.2.80:443 --tls --send 'GET / HTTP/1.1\r\nHost: cover\r\nConnection: close\r\n\r\n')" \
        'd["first_text"].startswith("HTTP/1.1 200")'
    check "SOCKS5 proxy reaches the relay" "$(fetch client --socks 192.0.2.108:1080 --connect $R --tls --ca "$LAB_PKI/ca.pem" --send 'BULK 1000' --expect 1000)" \
        "$TLS_OK and d['received']==1000"
    check "client reaches the bridge" "$(fetch client --connect 198.51.100.10:443 --tls --send 'BULK 1000' --expect 1000)" "$TLS_OK"
    check "client reaches the allowlisted host" "$(fetch client --connect 100.64.0.10:443 --tls --send 'BULK 1000' --expect 1000)" "$TLS_OK"
    check "client reaches the obfs4 port" "$(fetch client --connect 203.0.113.10:8443 --send-random 300 --expect 300)" 'd["received"]==300'
}

selftest_2() {
    check "national DNS: NXDOMAIN" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("rcode")=="NXDOMAIN"'
    check "system resolver fails" "$(in_ns client python3 -c 'import json,socket
try: a = socket.gethostbyname("relay.lab.example")
except OSError as e: a = "error"
print(json.dumps({"a": a}))')" 'd["a"]=="error"'
    check "DoH still answers" "$(dnsq client --via doh --server https://192.0.2.53/dns-query --ca "$LAB_PKI/ca.pem" relay.lab.example)" \
        'd.get("answers")==["203.0.113.10"]'
    check "DNS over TCP still answers" "$(dnsq client --via tcp --server 192.0.2.53 relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
    check "other names still resolve" "$(dnsq client --server $NATIONAL_DNS cover.lab.example)" 'd.get("answers")==["192.0.2.80"]'
}

selftest_3() {
    check "national DNS: poisoned" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("answers")==["192.0.2.80"]'
    check "UDP to the honest resolver is hijacked" "$(dnsq client --server 192.0.2.53 relay.lab.example)" 'd.get("answers")==["192.0.2.80"]'
    check "DNS over TCP is left alone" "$(dnsq client --via tcp --server 192.0.2.53 relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
    check "DoH is blocked" "$(dnsq client --via doh --server https://192.0.2.53/dns-query --ca "$LAB_PKI/ca.pem" relay.lab.example)" \
        'd.get("error")=="timeout"'
    check "peer's UDP DNS is not hijacked" "$(dnsq peer --server 192.0.2.53 relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
}

selftest_4_drop() {
    check "relay range dropped" "$(fetch client --connect $R --connect-timeout 2)" 'd["connect"]=="timeout"'
    check "bridge reachable" "$(fetch client --connect 198.51.100.10:443 --tls --send 'BULK 1000' --expect 1000)" "$TLS_OK"
}
selftest_4_reset() {
    check "relay range reset" "$(fetch client --connect $R --connect-timeout 2)" 'd["connect"] in ("refused","reset") and d["seconds"]<1'
    check "relay obfs4 port reset too" "$(fetch client --connect 203.0.113.10:8443 --connect-timeout 2)" 'd["connect"] in ("refused","reset")'
    check "bridge reachable" "$(fetch client --connect 198.51.100.10:443 --tls --send 'BULK 1000' --expect 1000)" "$TLS_OK"
}

selftest_5() {
    check "ClientHello with the relay's SNI is reset" \
        "$(fetch client --connect $R --tls --sni relay.lab.example --ca "$LAB_PKI/ca.pem" --send 'BULK 10' --expect 10)" \
        'd["tls"]=="reset"'
    check "no SNI (IP literal) passes" "$(fetch client --connect $R --tls --send 'BULK 10' --expect 10)" "$TLS_OK"
    check "another SNI passes" "$(fetch client --connect $R --tls --sni cover.lab.example --send 'BULK 10' --expect 10)" "$TLS_OK"
}

selftest_6() {
    # 60 KB at 150 kbit/s is ~3.3 s; loss makes it slower, never faster.
    check "download is throttled" "$(fetch client --connect $R --tls --send 'BULK 60000' --expect 60000 --idle 10 --timeout 40)" \
        'd["received"]==60000 and 40 <= d["kbit_per_s"] <= 200'
    check "upload is throttled" "$(fetch client --connect $R --tls --upload 40000 --expect 3 --idle 10 --timeout 40)" \
        'd["first_text"]=="OK\n" and d["kbit_per_s"] <= 200'
}

selftest_7() {
    # The freeze must land near 16 KB of server data (payload a bit below: headers count).
    check "download freezes near 16 KB" "$(fetch client --connect $R --tls --send 'BULK 200000' --idle 3 --timeout 20)" \
        'd["end"]=="idle" and 8000 <= d["received"] <= 17000'
    check "a new connection gets its own 16 KB" "$(fetch client --connect $R --tls --send 'BULK 10000' --expect 10000)" \
        'd["received"]==10000'
    check "client-to-server direction is not frozen" "$(fetch client --connect $R --tls --upload 100000 --expect 3 --idle 5)" \
        'd["first_text"]=="OK\n"'
}

selftest_8() {
    check "TLS to 443 passes" "$(fetch client --connect $R --tls --send 'BULK 30000' --expect 30000)" \
        "$TLS_OK and d['received']==30000"
    check "non-TLS first bytes to 443 are dropped" "$(fetch client --connect $R --send 'hello, not TLS' --idle 3)" \
        'd["connect"]=="ok" and d["received"]==0'
    check "plain HTTP to 443 is dropped" "$(fetch client --connect $R --send 'GET / HTTP/1.1\r\nHost: x\r\n\r\n' --idle 3)" \
        'd["received"]==0'
    check "other ports are dropped" "$(fetch client --connect 203.0.113.10:8443 --connect-timeout 2)" 'd["connect"]=="timeout"'
    check "DNS to the censor still works" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
    check "DNS over TCP elsewhere is dropped" "$(dnsq client --via tcp --server 192.0.2.53 relay.lab.example)" 'd.get("error")=="timeout"'
}

selftest_9() {
    # The prober's capture and probe machinery, with the cover host as the "relay": it is an
    # nginx look-alike, so the report must come out clean.
    local dir=$LAB_WORK/st9
    mkdir -p "$dir"
    bg st-capture censor python3 "$LAB_DIR/probe.py" capture --iface "$CLIENT_IF" --src 10.10.1.2 \
        --dst 192.0.2.80:443 --out "$dir/hello.bin" --timeout 15
    sleep 0.5
    fetch client --connect 192.0.2.80:443 --tls --send 'GET / HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n' >/dev/null
    local t=0
    while alive st-capture && (( t++ < 50 )); do sleep 0.2; done
    check "prober captured the ClientHello" "{\"hex\": \"$(head -c 3 "$dir/hello.bin" 2>/dev/null | od -An -tx1 | tr -d ' \n')\"}" \
        'd["hex"].startswith("1603")'
    in_ns censor python3 "$LAB_DIR/probe.py" probe --target 192.0.2.80:443 --hello "$dir/hello.bin" --out "$dir/censor.json" >>"$LAB_LOG" 2>&1
    in_ns peer python3 "$LAB_DIR/probe.py" probe --target 192.0.2.80:443 --hello "$dir/hello.bin" --out "$dir/peer.json" >>"$LAB_LOG" 2>&1
    local report rc
    report=$(python3 "$LAB_DIR/probe.py" report "$dir/censor.json" "$dir/peer.json")
    rc=$?
    printf '%s\n' "$report" >>"$LAB_LOG"
    check "probing an nginx look-alike finds nothing" "{\"rc\": $rc}" 'd["rc"]==0'
}

selftest_10() {
    check "TLS to the relay range is dropped" "$(fetch client --connect $R --tls --send 'BULK 10' --connect-timeout 3 --idle 3 --timeout 8)" \
        'd["connect"]=="ok" and d["tls"]!="ok"'
    check "random bytes to the obfs4 port pass" "$(fetch client --connect 203.0.113.10:8443 --send-random 3000 --expect 3000)" \
        'd["received"]==3000'
    check "TLS elsewhere passes" "$(fetch client --connect 198.51.100.10:443 --tls --send 'BULK 100' --expect 100)" "$TLS_OK"
}

selftest_11() {
    check "direct connection blocked" "$(fetch client --connect $R --connect-timeout 2)" 'd["connect"]=="timeout"'
    check "through the SOCKS5 proxy works" "$(fetch client --socks 192.0.2.108:1080 --connect $R --tls --ca "$LAB_PKI/ca.pem" --send 'BULK 20000' --expect 20000)" \
        "$TLS_OK and d['received']==20000"
    check "DNS to the censor still works" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("answers")==["203.0.113.10"]'
}

selftest_12() {
    check "allowlisted range reachable" "$(fetch client --connect 100.64.0.10:443 --tls --send 'BULK 20000' --expect 20000)" \
        "$TLS_OK and d['received']==20000"
    check "relay unreachable" "$(fetch client --connect $R --connect-timeout 2)" 'd["connect"]=="timeout"'
    check "bridge range unreachable" "$(fetch client --connect 198.51.100.10:443 --connect-timeout 2)" 'd["connect"]=="timeout"'
    check "allowlisted name resolves" "$(dnsq client --server $NATIONAL_DNS allowed.lab.example)" 'd.get("answers")==["100.64.0.10"]'
    check "other names are NXDOMAIN" "$(dnsq client --server $NATIONAL_DNS relay.lab.example)" 'd.get("rcode")=="NXDOMAIN"'
}

# selftest_scenario N — resets the censor, applies N's rules (timed), runs its checks.
selftest_scenario() {
    local n=$1 t0 setup sub rc=0
    local -a parts=("$n")
    [[ $n == 4 ]] && parts=(4_drop 4_reset)
    ST_FAILS=()
    local total_setup=0
    for sub in "${parts[@]}"; do
        t0=$(now_us)
        reset_censor
        "censor_$sub"
        setup=$(secs_since "$t0")
        log "selftest $sub: censor set up in $setup s"
        "selftest_$sub"
        [[ $n != 1 ]] && check_peer_free
        log "censor hits: $(censor_hits | paste -sd'|')"
        total_setup=$setup
    done
    local status=PASS
    ((${#ST_FAILS[@]})) && { status=FAIL; rc=1; }
    print_line "$status" "$n" "$(scenario_name "$n") (selftest)" "setup $total_setup s" "${ST_FAILS[*]:-}"
    record "$n" number "$n" name "$(scenario_name "$n")" pass "$((1 - rc))" setup_s "$total_setup" \
        reason "${ST_FAILS[*]:-}"
    return $rc
}
