#!/usr/bin/env bash
# End-to-end server time by what is sent: start `glimpse serve` on loopback with a CLIP and a ViT
# folder (random real-size weights are fine), once per decode mode, and run the upload_timing
# example against it (uploads of 0.16, 2 and 12 MP JPEG and a 4 MP PNG made from one photo; then
# 6 and 64 labels never seen before, a subset and a reorder of cached labels). Prints the server's
# `timingMs` medians as JSON lines, and the process's resident memory after load and after the runs.
#
#   tools/bench/upload_sizes.sh CLIP_DIR VIT_DIR
#
# Env: GLIMPSE (default target/release/glimpse), UPLOAD_TIMING (the example binary), IMAGE (the
# photo, default tests/fixtures/images/motorcycle.jpg), RUNS (default 9), DECODES (default
# "exact fast"), PORT (default 18081), and any GLIMPSE_* server setting (GLIMPSE_PRECISION, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIP_DIR=${1:?usage: upload_sizes.sh CLIP_DIR VIT_DIR}
VIT_DIR=${2:?usage: upload_sizes.sh CLIP_DIR VIT_DIR}
GLIMPSE=${GLIMPSE:-target/release/glimpse}
UPLOAD_TIMING=${UPLOAD_TIMING:-target/release/examples/upload_timing}
IMAGE=${IMAGE:-tests/fixtures/images/motorcycle.jpg}
PORT=${PORT:-18081}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
server=
export GLIMPSE_DATABASE_URL="sqlite://$work/glimpse.db"
export GLIMPSE_BIND="127.0.0.1:$PORT"
export GLIMPSE_CLIP_MODEL="$CLIP_DIR"
export GLIMPSE_VIT_MODEL="$VIT_DIR"
export GLIMPSE_MAX_UPLOAD_BYTES=${GLIMPSE_MAX_UPLOAD_BYTES:-40000000}
key=$("$GLIMPSE" keys create --credits 1000000 --name bench --json | sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
rss() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^glimpse_process_resident_bytes/ { printf "%.0f MiB", $2 / 1048576 }'; }
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) · precision ${GLIMPSE_PRECISION:-fp32} · load: $(uptime | sed 's/.*load/load/')"
for decode in ${DECODES:-exact fast}; do
  GLIMPSE_DECODE=$decode "$GLIMPSE" serve >"$work/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { cat "$work/serve.log"; exit 1; }
    sleep 0.5
  done
  echo "# GLIMPSE_DECODE=$decode · resident after load: $(rss)"
  "$UPLOAD_TIMING" --url "http://127.0.0.1:$PORT" --key "$key" --image "$IMAGE" --runs "${RUNS:-9}"
  echo "# resident after the runs: $(rss)"
  kill $server; wait $server 2>/dev/null || true
done
echo "# load: $(uptime | sed 's/.*load/load/')"
