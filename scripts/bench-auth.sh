#!/usr/bin/env bash
# The cost of the authentication checks under load (docs/benchmarks.md,
# section 5): loadtest against gomail with SPF, DKIM and DMARC on and off,
# interleaved, for an Ed25519- and an RSA-2048-signed 4 KiB message, one
# message per connection and connection reuse. Prints one line per run,
# then a table of medians.
#
#   scripts/bench-auth.sh [rounds] [messages]      (default: 5 rounds, 20000)
#
# Every run starts a fresh gomail with a data_dir of its own, sends 1000
# messages to warm the DNS cache, then the measured ones. Nothing is
# deleted until the end (about 35 KB a message, spool included: 0.7 GB a run of 20000): on ext4,
# creating files soon after tens of thousands were deleted makes inode
# allocation scan the recently deleted ones (`recently_deleted` in a
# profile; ext4 counts an inode deleted in the last 60 to 300 s as
# recent). That slowed the store by a varying amount and blurred the
# comparison, so also start this at least 5 minutes after deleting a
# large tree on the same filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
messages=${2:-20000}
work=$(mktemp -d /tmp/bench-auth.XXXXXX)
need_gb=$((rounds * 8 * (messages + 1000) * 35 / 1000000 + 1))  # about 35 KB a message, spool included
free_gb=$(df -P --block-size=1G "$work" | awk 'NR == 2 {print $4}')
if ((free_gb < need_gb)); then
    echo "scripts/bench-auth.sh: $rounds rounds need about $need_gb GB free under /tmp, there are $free_gb" >&2
    rmdir "$work"
    exit 1
fi
cargo build --release -q -p gomail -p loadtest --example auth_dns

./target/release/examples/auth_dns "$work/msgs" >"$work/dns.log" 2>&1 &
dns_pid=$!
cleanup() {
    kill "$dns_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do
    grep -q ' on ' "$work/dns.log" 2>/dev/null && break
    sleep 0.1
done
dns=$(sed -n 's/.* on \([0-9.:]*\) .*/\1/p' "$work/dns.log")
[[ -n $dns ]] || { echo "auth_dns did not start: $(cat "$work/dns.log")" >&2; exit 1; }

run() { # key mode on|off
    local key=$1 mode=$2 auth=$3 off=() dir
    [[ $auth == off ]] && off=(--set spf_enabled=false --set dkim_enabled=false --set dmarc_enabled=false)
    dir=$(mktemp -d "$work/data.XXXXXX")
    ./target/release/gomail server --set smtp_listen=127.0.0.1:20070 --set primary_domain=example.test \
        --set data_dir="$dir" --set port=0 --set dns_servers="$dns" "${off[@]}" >"$dir.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do
        grep -q 'SMTP on' "$dir.log" && break
        sleep 0.1
    done
    local lt=(./target/release/loadtest --server 127.0.0.1:20070 --sessions 50 --mode "$mode"
        --from sender@bench.test --to rcpt@example.test --data-file "$work/msgs/$key.eml")
    "${lt[@]}" --messages 1000 >/dev/null
    local t0 t1
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local out
    out=$("${lt[@]}" --messages "$messages")
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    # gomail's CPU (user + system) per measured message, ms (clock ticks of 10 ms).
    echo "$key $mode $auth cpu_ms=$(awk -v a="$t0" -v b="$t1" -v n="$messages" 'BEGIN{printf "%.3f", (b-a)*10/n}') $out"
}

for round in $(seq "$rounds"); do
    for key in ed25519 rsa; do
        for mode in perconn reuse; do
            for auth in off on; do
                run "$key" "$mode" "$auth" | tee -a "$work/runs"
            done
        done
    done
done

python3 - "$work/runs" <<'EOF'
import collections, re, statistics as st, sys
runs = collections.defaultdict(list)
pat = re.compile(r"(\w+) (\w+) (\w+) cpu_ms=([\d.]+) .*= ([\d.]+) msgs/s \| DATA-to-250 ms p50 ([\d.]+) p99 ([\d.]+)")
for line in open(sys.argv[1]):
    m = pat.match(line)
    if m:
        runs[m[1], m[2], m[3]].append((float(m[5]), float(m[4]), float(m[6]), float(m[7])))
print("\n| message | mode | auth | msgs/s median (range) | DATA-to-250 p50 | p99 | gomail CPU ms/msg | auth on vs off |")
print("|---|---|---|---|---|---|---|---|")
for key in ("ed25519", "rsa"):
    for mode in ("perconn", "reuse"):
        off = st.median(r[0] for r in runs[key, mode, "off"])
        for auth in ("off", "on"):
            v = runs[key, mode, auth]
            rates = [r[0] for r in v]
            mid = sorted(v)[len(v) // 2]  # the median run, for its latencies
            cmp = "" if auth == "off" else f"**{100 * (st.median(rates) / off - 1):+.1f} %**"
            print(f"| {key} | {mode} | {auth} | {st.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f}) "
                  f"| {mid[2]:.2f} ms | {mid[3]:.1f} ms | {st.median(r[1] for r in v):.2f} | {cmp} |")
EOF
