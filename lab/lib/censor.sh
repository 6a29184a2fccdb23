# shellcheck shell=bash
# The censor: per-scenario rules in the tzl-censor namespace. Every rule matches only traffic
# that enters from or leaves to the client's link ($CLIENT_IF), so the peer is never censored.
# Each censor_N function is what scenario N's README entry describes.

nft_censor() { must in_ns censor nft -f -; }   # reads a ruleset on stdin

# Back to an open network: no nft or iptables rules, no shaping, honest national DNS.
reset_censor() {
    try in_ns censor nft flush ruleset
    try in_ns censor iptables -F
    try in_ns censor iptables -t nat -F
    in_ns censor tc qdisc del dev "$CLIENT_IF" root 2>/dev/null
    in_ns censor tc qdisc del dev "$CLIENT_IF" ingress 2>/dev/null
    in_ns censor ip link del tzlifb0 2>/dev/null
    national_dns
}

# A forward-path table whose client-side rules go in chain from_client (packets from the
# client) and to_client (packets to it).
nft_client_chains() {
    cat <<EOF
table inet tzl {
    chain forward {
        type filter hook forward priority 0; policy accept;
        iifname "$CLIENT_IF" jump from_client
        oifname "$CLIENT_IF" jump to_client
    }
    chain from_client {
$1
    }
    chain to_client {
${2:-}
    }
}
EOF
}

# 1 baseline: nothing.
censor_1() { :; }

# 2 dns-nxdomain: the name is removed from the national DNS (Russia, WhatsApp, Feb 2026).
censor_2() { national_dns "address=/relay.lab.example/"; }

# 3 dns-poison: poisoned answers, all UDP/53 from the client hijacked to the national DNS
#   (TSPU since Aug 2026: even 8.8.8.8 answers come from the box), DoH blocked; TCP/53 is
#   left alone, as in the reports.
censor_3() {
    national_dns "address=/relay.lab.example/192.0.2.80"
    nft_censor <<EOF
table ip tzl_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat;
        iifname "$CLIENT_IF" udp dport 53 counter dnat to $NATIONAL_DNS
    }
}
$(nft_client_chains "        ip daddr 192.0.2.53 tcp dport 443 counter drop")
EOF
}

# 4 ip-blocked: the relay's whole /24 is null-routed (drop) or answered with RST.
censor_4_drop() { nft_client_chains "        ip daddr 203.0.113.0/24 counter drop" | nft_censor; }
censor_4_reset() {
    nft_client_chains "        ip daddr 203.0.113.0/24 meta l4proto tcp counter reject with tcp reset
        ip daddr 203.0.113.0/24 counter drop" | nft_censor
}

# 5 sni-block: a ClientHello carrying the name gets a TCP reset (the older TSPU behaviour;
#   a string match does not reassemble, so this is the easy version of the censor).
censor_5() {
    must in_ns censor iptables -A FORWARD -i "$CLIENT_IF" -p tcp --dport 443 \
        -m string --algo bm --string relay.lab.example -j REJECT --reject-with tcp-reset
}

# 6 throttle: ~150 kbit/s each way plus 5% random loss (Twitter 2021, YouTube 2024).
#   Egress to the client: tbf on the censor's end of the link. Ingress from the client:
#   redirected through an ifb device and shaped there.
censor_6() {
    local rate=150kbit
    must in_ns censor tc qdisc add dev "$CLIENT_IF" root tbf rate "$rate" burst 8kb latency 300ms
    must in_ns censor ip link add tzlifb0 type ifb
    must in_ns censor ip link set tzlifb0 up
    must in_ns censor tc qdisc add dev "$CLIENT_IF" handle ffff: ingress
    must in_ns censor tc filter add dev "$CLIENT_IF" parent ffff: protocol all u32 match u32 0 0 \
        action mirred egress redirect dev tzlifb0
    must in_ns censor tc qdisc add dev tzlifb0 root tbf rate "$rate" burst 8kb latency 300ms
    nft_client_chains "        numgen random mod 100 < 5 counter drop" "        numgen random mod 100 < 5 counter drop" |
        nft_censor
}

# 7 freeze: server-to-client packets from the "foreign hosting" range stop after ~16 KB on a
#   connection, silently (Russia since June 2025). The client opens the connection, so the
#   server's bytes are conntrack's reply direction.
censor_7() {
    nft_client_chains "" "        ip saddr 203.0.113.0/24 tcp sport 443 ct reply bytes > 16000 counter drop" | nft_censor
}

# 8 tls-allowlist: a protocol allowlist (Iran 2020, n4p#49): a client flow may continue only
#   if its first data bytes look like a TLS record (16 03) to port 443; everything else from
#   the client is dropped. The first data packet decides, and conntrack remembers the verdict
#   (mark 1 = allowed, 2 = condemned). @ih is the transport payload; a rule reading it does
#   not match a packet without payload, so handshake packets fall through to "ct mark 0".
censor_8() {
    nft_client_chains "        ct mark 1 accept
        ct mark 2 counter drop
        tcp dport 443 @ih,0,16 0x1603 counter ct mark set 1 accept
        tcp dport 443 @ih,0,8 != 0x16 counter ct mark set 2 drop
        tcp dport 443 @ih,0,16 != 0x1603 counter ct mark set 2 drop
        tcp dport 443 accept
        counter drop" "        ct mark 2 counter drop" | nft_censor
}

# 9 probing: no blocking; the prober (lab/probe.py) does the work.
censor_9() { :; }

# 10 obfs4: the inverse classifier: TCP flows to the relay's range whose first data looks
#   like TLS are dropped, so only random-looking bytes (obfs4 on 8443) get through.
censor_10() {
    nft_client_chains "        ip daddr != 203.0.113.0/24 accept
        meta l4proto != tcp accept
        ct mark 1 accept
        ct mark 2 counter drop
        @ih,0,16 0x1603 counter ct mark set 2 drop
        @ih,0,8 != 0x16 counter ct mark set 1 accept
        @ih,0,16 != 0x1603 counter ct mark set 1 accept" "        ct mark 2 counter drop" | nft_censor
}

# 11 socks-only: the only way out is a SOCKS5 proxy (a corporate or campus network, or a
#   user who has only a local proxy). DNS to the censor is local delivery, not forwarding,
#   so it still works.
censor_11() {
    nft_client_chains "        ip daddr 192.0.2.108 tcp dport 1080 counter accept
        counter drop" | nft_censor
}

# 12 allowlist: shutdown "whitelist mode" (Russian mobile networks since 2025): only the
#   allowlisted range is reachable and the national DNS answers only allowlisted names.
censor_12() {
    national_dns --no-upstream "address=/#/" "server=/allowed.lab.example/192.0.2.53" \
        "server=/cover.lab.example/192.0.2.53"
    nft_client_chains "        ip daddr 100.64.0.0/24 counter accept
        counter drop" | nft_censor
}

# What the censor's rules caught since the last reset: every nft rule with a non-zero counter,
# iptables rules with packets, and the shaper's drops. Proof that a scenario's censorship
# actually happened, not just that messages arrived.
censor_hits() {
    in_ns censor nft list ruleset 2>/dev/null | grep -v 'xt match' |
        sed -n 's/^[[:space:]]*\(.*counter packets [1-9][0-9]* bytes [0-9]*.*\)$/nft: \1/p'
    in_ns censor iptables -S FORWARD -v 2>/dev/null | awk '/^-A/ && / -c [1-9]/ { print "iptables: " $0 }'
    in_ns censor tc -s qdisc show dev "$CLIENT_IF" 2>/dev/null |
        awk '/^qdisc tbf/ { q = $0 } /dropped/ && q { print "tc egress: " $0; q = "" }'
    in_ns censor tc -s qdisc show dev tzlifb0 2>/dev/null |
        awk '/^qdisc tbf/ { q = $0 } /dropped/ && q { print "tc ingress: " $0; q = "" }'
    # dnsmasq logs "config NAME is ..." for every answer it made up (NXDOMAIN or forged).
    awk '/started, version/ { delete n } / config / { sub(/.*: config /, ""); n[$0]++ }
        END { for (k in n) print "national DNS: " k " (" n[k] "x)" }' "$LAB_LOGS/national-dns.log" 2>/dev/null
}
