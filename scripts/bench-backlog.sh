#!/usr/bin/env bash
# The memory of a webhook backlog (docs/benchmarks.md section 6): N
# messages of SIZE octets accepted while the receiver is down (nothing
# listens on its port), the server's RSS then; kill -9 and a restart with
# that backlog: the time until it listens and its RSS; then a receiver
# (examples/webhook_sink) comes up and everything is delivered.
#
#   scripts/bench-backlog.sh GOMAIL_BIN N SIZE
#
# Needs target/release/{loadtest,examples/webhook_sink}. Loopback only;
# N × SIZE octets of disk under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?gomail binary}
n=${2:?messages}
size=${3:?size}
lt=${BENCH_TARGET:-target}/release/loadtest
sink=${BENCH_TARGET:-target}/release/examples/webhook_sink
dir=$(mktemp -d /tmp/bench-backlog.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
peak() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
start() {
    "$bin" server --set smtp_listen=127.0.0.1:20191 \
        --set primary_domain=example.test --set data_dir="$dir/data" --set port=20192 \
        --set api_endpoint=http://127.0.0.1:20190/hook --set store_mode=never \
        --set webhook_retries=1000 --set webhook_retry_delay=1s \
        --set spool_max_backlog=1000000 --set max_message_size=2MB --set log_level=error \
        --set spf_enabled=false --set dkim_enabled=false --set dmarc_enabled=false \
        >"$dir/gomail.out" 2>>"$dir/gomail.log" &
    pid=$!
    t0=$(date +%s.%N)
    for _ in $(seq 600); do
        grep -q "SMTP on" "$dir/gomail.out" 2>/dev/null && break
        sleep 0.05
    done
    listen_s=$(echo "$(date +%s.%N) - $t0" | bc)
}
delivered() { curl -s 127.0.0.1:20192/metrics | awk '/^gomail_webhook_delivered_total/ {s += $2} END {print s + 0}'; }

start
echo "idle: RSS $(rss "$pid") MiB"
"$lt" --server 127.0.0.1:20191 --sessions 20 --messages "$n" --size "$size" --mode reuse \
    --timeout-s 1800 --json "$dir/report.json" >/dev/null
sleep 2
echo "after $n messages of $size octets accepted, receiver down: RSS $(rss "$pid") MiB, peak $(peak "$pid") MiB, spool $(du -sm "$dir/data/spool" | cut -f1) MiB on disk"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
start
echo "restart after kill -9 with the backlog: listening after ${listen_s} s, RSS $(rss "$pid") MiB"
"$sink" 127.0.0.1:20190 2>/dev/null &
t0=$(date +%s.%N)
for _ in $(seq 36000); do
    (($(delivered) >= n)) && break
    sleep 0.1
done
echo "receiver up: $(delivered) of $n delivered in $(echo "$(date +%s.%N) - $t0" | bc) s; peak RSS of the restarted server $(peak "$pid") MiB"
kill "$pid"
