#!/usr/bin/env bash
# Serving over HTTP vs the bare model: start `glimpse serve` on loopback with a real-size CLIP
# folder, then measure (bounded in time) one sequential client and N concurrent clients with the
# http_bench example, next to `glimpse bench` at batch 1 and batch N on the same machine (batch N
# before and after the concurrent run), and print the two ratios the performance targets use.
#
#   tools/bench/http_load.sh CLIP_DIR [SECONDS] [CLIENTS]
#
# CLIP_DIR: a Hugging Face CLIP folder (random real-size weights are fine:
# tools/bench/make_random_clip.py writes one).
# Env: GLIMPSE (glimpse binary, default target/release/glimpse), HTTP_BENCH (the example binary),
# IMAGE (default tests/fixtures/images/coffee.jpg), PORT (default 18080), ROUNDS (HTTP runs at N
# clients, each between two bench runs; default 1), METRICS_OUT (a file for
# the server's /metrics after the runs), and any GLIMPSE_* setting
# for the server (GLIMPSE_BATCH_SIZE, GLIMPSE_BATCH_WINDOW_MS, GLIMPSE_PRECISION — the bench
# rows use the same precision, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIP_DIR=${1:?usage: http_load.sh CLIP_DIR [SECONDS] [CLIENTS]}
SECS=${2:-20}
CLIENTS=${3:-8}
GLIMPSE=${GLIMPSE:-target/release/glimpse}
HTTP_BENCH=${HTTP_BENCH:-target/release/examples/http_bench}
IMAGE=${IMAGE:-tests/fixtures/images/coffee.jpg}
PORT=${PORT:-18080}
work=$(mktemp -d)
export GLIMPSE_DATABASE_URL="sqlite://$work/glimpse.db"
export GLIMPSE_BIND="127.0.0.1:$PORT"
export GLIMPSE_CLIP_MODEL="$CLIP_DIR"
export GLIMPSE_VIT_MODEL=${GLIMPSE_VIT_MODEL:-tests/fixtures/models/vit-tiny}
export GLIMPSE_MAX_UPLOAD_BYTES=${GLIMPSE_MAX_UPLOAD_BYTES:-20000000}

key=$("$GLIMPSE" keys create --credits 1000000 --name bench --json | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
"$GLIMPSE" serve >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.5
done

echo "# load: $(uptime)"
PRECISION=${GLIMPSE_PRECISION:-fp32}
bench() { "$GLIMPSE" bench --arch clip-b32 --precision "$PRECISION" --batch "$1" | tail -n 1; }
http() {
  "$HTTP_BENCH" --url "http://127.0.0.1:$PORT" --key "$key" --image "$IMAGE" --clients "$1" --seconds "$SECS"
}
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
echo "# glimpse bench, batch 1"
b1=$(bench 1); echo "$b1"
echo "# HTTP, 1 client sequential (labels cached after the warm-up)"
h1=$(http 1); echo "$h1"
# The bench at batch N runs before and after each HTTP run and that run's ratio uses their mean:
# other load on the machine drifts over a minute, and one side measured alone can catch it. With
# ROUNDS > 1 (bench, HTTP, bench, HTTP, …, bench) the median of the per-round ratios is printed
# too, for hosts whose speed wanders by more than the effect being measured.
ROUNDS=${ROUNDS:-1}
echo "# glimpse bench, batch $CLIENTS"
prev=$(bench "$CLIENTS"); echo "$prev"
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  echo "# HTTP, $CLIENTS concurrent clients (round $r of $ROUNDS)"
  h8=$(http "$CLIENTS"); echo "$h8"
  echo "# glimpse bench, batch $CLIENTS"
  next=$(bench "$CLIENTS"); echo "$next"
  ratio=$(awk -v a="$(echo "$prev" | field img_per_s)" -v b="$(echo "$next" | field img_per_s)" \
    -v h="$(echo "$h8" | field img_per_s)" 'BEGIN { printf "%.1f", 100 * h / ((a + b) / 2) }')
  ratios+=("$ratio")
  if [ "$r" = 1 ]; then b8a=$prev; b8b=$next; h8first=$h8; fi
  prev=$next
done
h8=$h8first
awk -v b1="$(echo "$b1" | field ms_p50)" -v h1="$(echo "$h1" | field ms_p50)" \
  -v b8a="$(echo "$b8a" | field img_per_s)" -v b8b="$(echo "$b8b" | field img_per_s)" \
  -v h8="$(echo "$h8" | field img_per_s)" -v n="$CLIENTS" 'BEGIN {
    printf "# 1 client: HTTP p50 %.1f ms = bench batch 1 p50 %.1f + %.1f ms\n", h1, b1, h1 - b1
    printf "# %d clients: HTTP %.2f img/s = %.1f %% of bench batch %d %.2f img/s (mean of %.2f and %.2f)\n",
      n, h8, 100 * h8 / ((b8a + b8b) / 2), n, (b8a + b8b) / 2, b8a, b8b
  }'
if [ "$ROUNDS" -gt 1 ]; then
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 }
    END { printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "# $CLIENTS clients over $ROUNDS rounds: % of bench batch $CLIENTS per round: ${ratios[*]}; median $median %"
fi
echo "# load: $(uptime)"
# Where the time went (stage histograms, batch sizes), when asked for.
if [ -n "${METRICS_OUT:-}" ]; then curl -sf "http://127.0.0.1:$PORT/metrics" >"$METRICS_OUT"; fi
