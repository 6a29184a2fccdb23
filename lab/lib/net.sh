# shellcheck shell=bash
# The lab's small internet: one namespace per host, each with its own veth to the censor's
# namespace, which routes between all of them. See lab/README.md for the diagram.

# name      address        prefix  gateway (the censor's address on that link)
LAB_HOSTS=(
    "client   10.10.1.2      24  10.10.1.1"
    "peer     10.10.2.2      24  10.10.2.1"
    "relay    203.0.113.10   24  203.0.113.1"
    "bridge   198.51.100.10  24  198.51.100.1"
    "allowed  100.64.0.10    24  100.64.0.1"
    "resolver 192.0.2.53     27  192.0.2.33"
    "cover    192.0.2.80     27  192.0.2.65"
    "proxy    192.0.2.108    27  192.0.2.97"
)
CLIENT_IF=tzl-client   # the censor's end of the client's link: every rule keys on it
NATIONAL_DNS=10.10.1.1

# ---------------------------------------------------------------- tools
# A fresh Debian 12 has none of these; lab/run installs what is missing (it runs as root).
ensure_tools() {
    local -A pkg_of=([ip]=iproute2 [tc]=iproute2 [nft]=nftables [iptables]=iptables [dnsmasq]=dnsmasq-base
        [obfs4proxy]=obfs4proxy [microsocks]=microsocks [openssl]=openssl [python3]=python3 [timeout]=coreutils
        [sysctl]=procps [flock]=util-linux)
    local -a missing=()
    local tool
    for tool in "${!pkg_of[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg_of[$tool]}")
    done
    ((${#missing[@]})) || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    say "installing: ${missing[*]}"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$LAB_LOG" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LAB_LOG" 2>&1 ||
        die "apt-get install ${missing[*]} failed (see $LAB_LOG)"
}

# ---------------------------------------------------------------- teardown
# Removes everything named tzl-*: processes inside our namespaces (by pid), the namespaces,
# their /etc/netns directories, and any stray tzl* link in the root namespace.
remove_lab() {
    local name pid
    if [[ -f ${LAB_WORK:-/nonexistent}/pids ]]; then
        while IFS=$'\t' read -r name pid; do kill_pid "$pid"; done <"$LAB_WORK/pids"
    fi
    # Anything still running inside our namespaces was started by the lab (or by what it
    # started, e.g. obfs4proxy under tamizdat): TERM, a moment's grace, then KILL.
    local -a namespaces
    mapfile -t namespaces < <(ip netns list 2>/dev/null | awk '$1 ~ /^tzl-/ { print $1 }')
    ns_pids() { for name in "${namespaces[@]}"; do ip netns pids "$name" 2>/dev/null; done; }
    for pid in $(ns_pids); do kill -TERM "$pid" 2>/dev/null; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [[ -z $(ns_pids) ]] && break
        sleep 0.2
    done
    for pid in $(ns_pids); do kill -KILL "$pid" 2>/dev/null; done
    for name in "${namespaces[@]}"; do ip netns del "$name" 2>/dev/null; done
    rm -rf /etc/netns/tzl-*
    for name in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^tzl/ { sub(/@.*/, "", $2); print $2 }'); do
        ip link del "$name" 2>/dev/null
    done
}

# ---------------------------------------------------------------- topology
# Veth offloads: with segmentation offload a "packet" can be 64 KB, and the freeze's byte
# counter would jump past 16 KB in one step; one segment per packet keeps it honest.
tune_link() {
    local ns=$1 dev=$2
    try ip -n "tzl-$ns" link set "$dev" gso_max_segs 1
    try ip -n "tzl-$ns" link set "$dev" gro_max_size 0
}

build_topology() {
    local line name addr prefix gw
    must ip netns add tzl-censor
    must ip -n tzl-censor link set lo up
    must in_ns censor sysctl -qw net.ipv4.ip_forward=1
    try in_ns censor sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    for line in "${LAB_HOSTS[@]}"; do
        read -r name addr prefix gw <<<"$line"
        must ip netns add "tzl-$name"
        must ip -n "tzl-$name" link set lo up
        try in_ns "$name" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        must ip link add "tzl-$name" netns tzl-censor type veth peer name tzl0 netns "tzl-$name"
        must ip -n tzl-censor addr add "$gw/$prefix" dev "tzl-$name"
        must ip -n "tzl-$name" addr add "$addr/$prefix" dev tzl0
        tune_link censor "tzl-$name"
        tune_link "$name" tzl0
        must ip -n tzl-censor link set "tzl-$name" up
        must ip -n "tzl-$name" link set tzl0 up
        must ip -n "tzl-$name" route add default via "$gw"
    done
    # The national DNS for the censored user; everyone else asks the honest resolver.
    mkdir -p /etc/netns
    for name in client peer relay bridge allowed resolver cover proxy; do
        mkdir -p "/etc/netns/tzl-$name"
        if [[ $name == client ]]; then
            echo "nameserver $NATIONAL_DNS" >"/etc/netns/tzl-$name/resolv.conf"
        else
            echo "nameserver 192.0.2.53" >"/etc/netns/tzl-$name/resolv.conf"
        fi
    done
    # Conntrack byte counters (the freeze rule reads them) must be on before flows start;
    # the sysctl appears once conntrack is in use in the namespace, so load it with a rule.
    must in_ns censor nft -f - <<<$'table inet tzl_boot {\n chain c {\n type filter hook forward priority 10; ct state new accept\n }\n}'
    must in_ns censor sysctl -qw net.netfilter.nf_conntrack_acct=1
}

# ---------------------------------------------------------------- certificates
# A lab CA (its certificate goes to clients as TAMIZDAT_DOH_CA), the DoH server's certificate
# (IP SAN 192.0.2.53), one for the self-test's stand-in servers, and the cover host's
# self-signed one.
make_pki() {
    local d=$LAB_PKI
    mkdir -p "$d"
    must openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 \
        -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=Tamizdat lab CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    issue_cert doh "192.0.2.53" "IP:192.0.2.53"
    issue_cert test "relay.lab.example" \
        "IP:203.0.113.10,IP:198.51.100.10,IP:100.64.0.10,DNS:relay.lab.example,DNS:allowed.lab.example"
    must openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 \
        -keyout "$d/cover.key" -out "$d/cover.pem" -subj "/CN=cover.lab.example" \
        -addext "subjectAltName=DNS:cover.lab.example,IP:192.0.2.80"
}

issue_cert() {
    local name=$1 cn=$2 san=$3 d=$LAB_PKI
    must openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$d/$name.key" -out "$d/$name.csr" -subj "/CN=$cn"
    printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/$name.ext"
    must openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 3 -out "$d/$name.pem" -extfile "$d/$name.ext"
}

# ---------------------------------------------------------------- services
# national_dns [--no-upstream] [dnsmasq lines...] — (re)starts the censor's resolver on
# 10.10.1.1 with the base configuration plus the scenario's lines; it forwards to the honest
# resolver unless --no-upstream. No cache, so a new rule applies at once.
national_dns() {
    stop national-dns
    local conf=$LAB_WORK/national-dns.conf upstream=1
    if [[ ${1:-} == --no-upstream ]]; then upstream=0; shift; fi
    {
        printf '%s\n' "no-resolv" "no-hosts" "bind-interfaces" "listen-address=$NATIONAL_DNS" \
            "user=root" "group=root" "cache-size=0" "pid-file=$LAB_WORK/national-dns.pid" \
            "log-queries" "log-facility=$LAB_LOGS/national-dns.log"
        if (($#)); then printf '%s\n' "$@"; fi
        ((upstream)) && echo "server=192.0.2.53"
    } >"$conf"
    log "national DNS config: $(grep -v '^\(no-\|bind\|listen\|user\|group\|cache\|pid\|log\)' "$conf" | tr '\n' ' ')"
    bg national-dns censor dnsmasq --keep-in-foreground --conf-file="$conf"
    wait_dns censor "$NATIONAL_DNS" 5 || die "national DNS did not start (see $LAB_LOGS/national-dns.err)"
}

# wait_dns NS SERVER SECONDS — waits until SERVER answers anything over UDP.
wait_dns() {
    local ns=$1 server=$2 until=$(( $(now_us) + $3 * 1000000 ))
    while (( $(now_us) < until )); do
        if in_ns "$ns" python3 "$LAB_DIR/labtool.py" dns --server "$server" --timeout 0.5 probe.lab.example |
            grep -q '"rcode"'; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_resolver() {
    local conf=$LAB_WORK/resolver.conf
    printf '%s\n' "no-resolv" "no-hosts" "bind-interfaces" "listen-address=192.0.2.53" \
        "user=root" "group=root" "pid-file=$LAB_WORK/resolver.pid" \
        "log-queries" "log-facility=$LAB_LOGS/resolver.log" \
        "address=/relay.lab.example/203.0.113.10" \
        "address=/cover.lab.example/192.0.2.80" \
        "address=/allowed.lab.example/100.64.0.10" \
        "address=/#/" >"$conf"   # everything else: NXDOMAIN (the lab has no real internet)
    bg resolver resolver dnsmasq --keep-in-foreground --conf-file="$conf"
    wait_dns resolver 192.0.2.53 5 || die "honest resolver did not start"
    bg doh resolver python3 "$LAB_DIR/doh.py" --listen 192.0.2.53:443 \
        --cert "$LAB_PKI/doh.pem" --key "$LAB_PKI/doh.key" --upstream 192.0.2.53:53
    wait_tcp resolver 192.0.2.53 443 10 || die "DoH server did not start (see $LAB_LOGS/doh.err)"
}

start_services() {
    start_resolver   # first: the national DNS forwards to it
    national_dns
    bg cover cover python3 "$LAB_DIR/cover.py" --listen 192.0.2.80:443 \
        --cert "$LAB_PKI/cover.pem" --key "$LAB_PKI/cover.key"
    bg proxy proxy microsocks -i 192.0.2.108 -p 1080
    wait_tcp cover 192.0.2.80 443 10 || die "cover host did not start"
    wait_tcp proxy 192.0.2.108 1080 10 || die "SOCKS proxy did not start"
}
