#!/usr/bin/env bash
# SMTP → webhook end to end (docs/benchmarks.md section 6): for each
# message size and recipient count, a fresh gomail and data_dir, loadtest
# sends, examples/webhook_sink answers 200; measures the SMTP rate, the
# time until every recipient's POST arrived, the server's CPU time per
# delivered POST and its peak RSS. Several binaries (before/after) are run
# interleaved, round by round.
#
#   scripts/bench-webhook.sh ROUNDS GOMAIL_BIN...
#   (BENCH_SCALE=N divides every message count, for a quick check)
#
# Needs target/release/{loadtest,examples/webhook_sink} (cargo build
# --release -p loadtest --examples). Loopback only; every run is bounded
# in messages and time.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:?rounds}
shift
bins=("$@")
((${#bins[@]})) || { echo "usage: $0 ROUNDS GOMAIL_BIN..." >&2; exit 2; }
lt=${BENCH_TARGET:-target}/release/loadtest
sink=${BENCH_TARGET:-target}/release/examples/webhook_sink
[[ -x $lt && -x $sink ]] || { echo "build first: cargo build --release -p gomail -p loadtest --bins --examples" >&2; exit 1; }

# size rcpts messages sessions (BENCH_CASES="4096 1 20000 50;..." for others)
cases=(
    "4096 1 20000 50"
    "4096 10 4000 50"
    "1048576 1 1000 20"
    "1048576 10 300 20"
)
if [[ -n ${BENCH_CASES:-} ]]; then
    IFS=';' read -r -a cases <<<"$BENCH_CASES"
fi

clock_ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' bin size rcpts smtp_msgs_s posts end_to_end_posts_s cpu_ms_per_post peak_rss_mib
for round in $(seq "$rounds"); do
    for c in "${cases[@]}"; do
        read -r size rcpts n sessions <<<"$c"
        n=$((n / ${BENCH_SCALE:-1}))
        for bin in "${bins[@]}"; do
            dir=$(mktemp -d /tmp/bench-wh.XXXXXX)
            "$sink" 127.0.0.1:20090 2>"$dir/sink.log" &
            sink_pid=$!
            "$bin" server --set smtp_listen=127.0.0.1:20091 \
                --set primary_domain=example.test --set data_dir="$dir/data" --set port=20092 \
                --set api_endpoint=http://127.0.0.1:20090/hook --set store_mode=never \
                --set max_message_size=2MB --set log_level=warn \
                --set spf_enabled=false --set dkim_enabled=false --set dmarc_enabled=false \
                >"$dir/gomail.out" 2>"$dir/gomail.log" &
            pid=$!
            for _ in $(seq 100); do
                grep -q "SMTP on" "$dir/gomail.out" 2>/dev/null && break
                sleep 0.1
            done
            cpu0=$(cpu_ticks "$pid")
            t0=$(date +%s.%N)
            "$lt" --server 127.0.0.1:20091 --sessions "$sessions" --messages "$n" \
                --size "$size" --rcpts "$rcpts" --mode reuse --timeout-s 600 \
                --json "$dir/report.json" >/dev/null
            want=$((n * rcpts))
            got=0
            for _ in $(seq 1200); do
                got=$(curl -s 127.0.0.1:20092/metrics | awk '/^gomail_webhook_delivered_total/ {s += $2} END {print s + 0}')
                ((got >= want)) && break
                sleep 0.1
            done
            t1=$(date +%s.%N)
            cpu1=$(cpu_ticks "$pid")
            peak=$(peak_kib "$pid")
            kill "$pid" "$sink_pid"
            wait "$pid" "$sink_pid" 2>/dev/null || true
            rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['msgs_per_s']))" "$dir/report.json" 2>/dev/null || echo '?')
            awk -v b="$bin" -v s="$size" -v r="$rcpts" -v rate="$rate" \
                -v got="$got" -v want="$want" -v t="$(echo "$t1 - $t0" | bc)" \
                -v cpu="$(( (cpu1 - cpu0) * 1000 / clock_ticks ))" -v peak="$peak" \
                'BEGIN { printf "%s\t%s\t%s\t%s\t%d/%d\t%.0f\t%.3f\t%.0f\n", b, s, r, rate, got, want, got / t, cpu / (got ? got : 1), peak / 1024 }'
            rm -rf "$dir"
        done
    done
done
