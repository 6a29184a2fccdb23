# shellcheck shell=bash
# Shared helpers for lab/run: logging, clocks, background processes, Tamizdat invocations.

LAB_LOG=${LAB_LOG:-/dev/null}   # the current log file (lab/run points it per scenario)

# What the user sees goes to file descriptors 3 (stdout) and 4 (stderr), saved when lab/run
# starts, so that it still arrives when a trap runs inside a redirected command.
exec 3>&1 4>&2
log() { printf '%s %s\n' "$(date +%T.%3N)" "$*" >>"$LAB_LOG"; }
say() { printf '%s\n' "$*" >&3; log "$*"; }
die() { printf 'lab: %s\n' "$*" >&4; log "FATAL: $*"; exit 2; }

# Runs a command, logging it and its output; fails loudly. For setup steps that must work.
must() {
    log "+ $*"
    if ! "$@" >>"$LAB_LOG" 2>&1; then
        die "failed: $* (see $LAB_LOG)"
    fi
}

# Like must, but a failure is only logged (for "best effort" steps such as gro_max_size).
try() { log "+ $*"; "$@" >>"$LAB_LOG" 2>&1 || log "  (failed, ignored)"; }

# Commands inside a namespace.
in_ns() { local ns=$1; shift; ip netns exec "tzl-$ns" "$@"; }

# ---------------------------------------------------------------- clocks
# EPOCHREALTIME uses the locale's decimal separator; lab/run sets LC_NUMERIC=C.
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# Seconds since a now_us value, with one decimal: "1.8".
secs_since() {
    local d=$(( $(now_us) - $1 ))
    printf '%d.%d' $(( d / 1000000 )) $(( d % 1000000 / 100000 ))
}
# Whole seconds left until a now_us deadline (0 when passed).
secs_left() {
    local d=$(( ($1 - $(now_us)) / 1000000 ))
    (( d > 0 )) && echo "$d" || echo 0
}
# A deadline N seconds from now, scaled by LAB_DEADLINE_FACTOR (for slow machines).
deadline_in() {
    local scaled
    scaled=$(awk -v s="$1" -v f="${LAB_DEADLINE_FACTOR:-1}" 'BEGIN { printf "%d", s * f }')
    echo $(( $(now_us) + scaled * 1000000 ))
}
rand_tag() { od -An -N6 -tx1 /dev/urandom | tr -d ' \n'; }

# ---------------------------------------------------------------- background processes
# Every process the lab starts is recorded by pid in $LAB_WORK/pids (name<TAB>pid), so teardown
# stops exactly those (and whatever is left inside our own namespaces), nothing else.
declare -gA BG_PID=()

# bg NAME NS CMD... — starts CMD in namespace NS, stdout to $LAB_LOGS/NAME.out, stderr .err.
bg() {
    local name=$1 ns=$2; shift 2
    log "+ [bg $name in $ns] $*"
    ip netns exec "tzl-$ns" "$@" >"$LAB_LOGS/$name.out" 2>"$LAB_LOGS/$name.err" </dev/null 3>&- 4>&- 9>&- &
    BG_PID[$name]=$!
    printf '%s\t%s\n' "$name" "$!" >>"$LAB_WORK/pids"
}

# stop NAME — stops one background process started by bg (TERM, then KILL).
stop() {
    local name=$1 pid=${BG_PID[$1]:-}
    [[ -n $pid ]] || return 0
    kill_pid "$pid"
    unset 'BG_PID[$name]'
    # Forget it, so teardown never signals a pid the system has since given to someone else.
    sed -i "/^$name\t$pid\$/d" "$LAB_WORK/pids"
}

kill_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

alive() { [[ -n ${BG_PID[$1]:-} ]] && kill -0 "${BG_PID[$1]}" 2>/dev/null; }

# first_line FILE SECONDS [PROCESS-NAME] — waits for a file's first line and prints it.
first_line() {
    local file=$1 until=$(( $(now_us) + $2 * 1000000 )) name=${3:-}
    while (( $(now_us) < until )); do
        if [[ -s $file ]] && IFS= read -r line <"$file" && [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        if [[ -n $name ]] && ! alive "$name"; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# wait_tcp NS IP PORT SECONDS — waits until something listens there (seen from NS).
wait_tcp() {
    local ns=$1 ip=$2 port=$3 until=$(( $(now_us) + $4 * 1000000 ))
    while (( $(now_us) < until )); do
        if in_ns "$ns" python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()' \
            "$ip" "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------- Tamizdat
# Every client runs with the lab's DNS bootstrap settings and passphrase. The DoH resolver is
# addressed by IP and its certificate comes from the lab CA.
# The environment is built from scratch (env -i) so that nothing from the caller's, such as
# TAMIZDAT_PROXY, changes what a scenario tests.
tz_env() {
    printf '%s\n' "PATH=$PATH" "HOME=$1" "TAMIZDAT_HOME=$1" "TAMIZDAT_PASSPHRASE=lab" \
        "TAMIZDAT_DOH=https://192.0.2.53/dns-query" "TAMIZDAT_DOH_CA=$LAB_PKI/ca.pem" \
        "TAMIZDAT_DNS_TCP=192.0.2.53:53" "TAMIZDAT_LOG=${TAMIZDAT_LOG:-warn}"
}

# tz NS HOME SECONDS ARGS... — runs tamizdat as the identity in HOME inside namespace NS,
# killed after SECONDS. Prints its stdout; stdout, stderr, exit status and time go to the log.
tz() {
    local ns=$1 home=$2 limit=$3; shift 3
    (( limit < 1 )) && limit=1
    local -a env
    mapfile -t env < <(tz_env "$home")
    local t0 out rc
    t0=$(now_us)
    # --foreground: stay in our process group, so a Ctrl-C reaches tamizdat at once.
    out=$(ip netns exec "tzl-$ns" env -i "${env[@]}" timeout --foreground -k 3 "$limit" "$TAMIZDAT_BIN" "$@" 2>>"$LAB_LOG" 9>&-)
    rc=$?
    log "[$ns ${home##*/}] tamizdat $* -> exit $rc after $(secs_since "$t0") s${out:+; stdout:}"
    [[ -n $out ]] && printf '%s\n' "$out" | head -c 4000 >>"$LAB_LOG"
    [[ -n $out ]] && printf '%s\n' "$out"
    return $rc
}
