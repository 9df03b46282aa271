#!/usr/bin/env bash
# Bounded loopback load test: `glimpse serve` on the fixture models with GLIMPSE_MAX_IN_FLIGHT=4,
# driven by wrk at 4x that concurrency with a multipart upload to /api/image-classification/vit.
# Passes when every answer is 200/429/503, RSS stays under RSS_LIMIT_KB, and a single request
# right after the load gets 200. Loopback only; bounded by DURATION and wrk's connection count.
#
#   tools/loadtest.sh                       # 16 connections, 20 s
#   DURATION=10s CONNECTIONS=32 tools/loadtest.sh
#   GLIMPSE_BIN=target/release/glimpse tools/loadtest.sh
#
# Needs: wrk (apt-get install -y wrk), curl, a built `glimpse` binary.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
IN_FLIGHT="${IN_FLIGHT:-4}"
CONNECTIONS="${CONNECTIONS:-$((IN_FLIGHT * 4))}"
DURATION="${DURATION:-20s}"
PORT="${PORT:-18089}"
IMAGE="${IMAGE:-tests/fixtures/images/chelsea.jpg}"
RSS_LIMIT_KB="${RSS_LIMIT_KB:-1048576}"
if [[ -z "${GLIMPSE_BIN:-}" ]]; then
  if [[ -x target/release/glimpse ]]; then GLIMPSE_BIN=target/release/glimpse; else GLIMPSE_BIN=target/debug/glimpse; fi
fi
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)" >&2; exit 2; }
[[ -x "$GLIMPSE_BIN" ]] || { echo "no glimpse binary at $GLIMPSE_BIN (cargo build -p glimpse)" >&2; exit 2; }

WORK="$(mktemp -d)"
SERVER_PID=""
SAMPLER_PID=""
cleanup() {
  [[ -n "$SAMPLER_PID" ]] && kill "$SAMPLER_PID" 2>/dev/null || true
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

export GLIMPSE_DATABASE_URL="sqlite://$WORK/glimpse.db"
export GLIMPSE_CLIP_MODEL="$ROOT/tests/fixtures/models/clip-tiny"
export GLIMPSE_VIT_MODEL="$ROOT/tests/fixtures/models/vit-tiny"
export GLIMPSE_BIND="127.0.0.1:$PORT"
export GLIMPSE_MAX_IN_FLIGHT="$IN_FLIGHT"
export GLIMPSE_ALLOW_PRIVATE_URLS=false
export RUST_LOG="${RUST_LOG:-warn}"

KEY_JSON="$("$GLIMPSE_BIN" keys create --credits 100000000 --name loadtest --json)"
KEY="$(printf '%s' "$KEY_JSON" | sed -n 's/.*"key" *: *"\([^"]*\)".*/\1/p')"
[[ -n "$KEY" ]] || { echo "could not make a key: $KEY_JSON" >&2; exit 1; }

"$GLIMPSE_BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null

# RSS once a second (kB), from before the load until after the probe.
( while kill -0 "$SERVER_PID" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || true
    sleep 1
  done ) >"$WORK/rss.txt" &
SAMPLER_PID=$!
sleep 1

cat >"$WORK/upload.lua" <<LUA
-- One multipart upload per request; every status is tallied per thread and summed in done().
local f = assert(io.open("$ROOT/$IMAGE", "rb"))
local img = f:read("*a")
f:close()
local boundary = "glimpseloadtest"
wrk.method = "POST"
wrk.headers["X-API-Key"] = "$KEY"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="image"; filename="load.jpg"\r\n'
  .. "Content-Type: image/jpeg\r\n\r\n" .. img .. "\r\n--" .. boundary .. "--\r\n"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("STATUS %d %d\n", k, v)) end
  io.write(string.format("ERRORS connect=%d read=%d write=%d timeout=%d status=%d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
end
LUA

echo "wrk -t2 -c$CONNECTIONS -d$DURATION --timeout 10s -s upload.lua http://127.0.0.1:$PORT/api/image-classification/vit"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency -s "$WORK/upload.lua" \
  "http://127.0.0.1:$PORT/api/image-classification/vit" | tee "$WORK/wrk.txt"

# Right after the load: one request must be answered 200 at once.
PROBE="$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' -H "X-API-Key: $KEY" \
  -F "image=@$ROOT/$IMAGE" "http://127.0.0.1:$PORT/api/image-classification/vit")"
sleep 1
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

# Credits are conserved: every 200 (and the probe) cost exactly one, nothing else cost any.
OK_COUNT="$(awk '$1=="STATUS" && $2==200 {print $3}' "$WORK/wrk.txt")"
LEFT="$("$GLIMPSE_BIN" keys list --json | sed -n 's/.*"credits" *: *\([0-9]*\).*/\1/p')"
SPENT=$((100000000 - LEFT))
echo "credits spent: $SPENT; 200 answers incl. probe: $((${OK_COUNT:-0} + 1))"

BAD="$(awk '$1=="STATUS" && $2!=200 && $2!=429 && $2!=503' "$WORK/wrk.txt")"
RSS_MIN="$(sort -n "$WORK/rss.txt" | head -1)"
RSS_MAX="$(sort -n "$WORK/rss.txt" | tail -1)"
echo "RSS kB: samples=$(wc -l <"$WORK/rss.txt") min=$RSS_MIN max=$RSS_MAX (limit $RSS_LIMIT_KB)"
echo "post-load probe: status and seconds = $PROBE"
echo "server log: $(grep -ci 'error' "$WORK/server.log" || true) error lines"
grep -i 'error' "$WORK/server.log" | sort | uniq -c | sort -rn | head -5 || true
if grep -qi "panic" "$WORK/server.log"; then echo "FAIL: the server log has a panic" >&2; exit 1; fi
[[ -z "$BAD" ]] || { echo "FAIL: statuses other than 200/429/503: $BAD" >&2; exit 1; }
grep -q '^STATUS 200 ' "$WORK/wrk.txt" || { echo "FAIL: no 200 under load" >&2; exit 1; }
[[ "$RSS_MAX" -le "$RSS_LIMIT_KB" ]] || { echo "FAIL: RSS $RSS_MAX kB over $RSS_LIMIT_KB" >&2; exit 1; }
# wrk stops each thread's loop at the deadline without reading the answers then in flight: each
# of its 2 threads can leave up to IN_FLIGHT admitted (and so charged) requests uncounted.
SLACK=$((SPENT - ${OK_COUNT:-0} - 1))
[[ "$SLACK" -ge 0 && "$SLACK" -le $((2 * IN_FLIGHT)) ]] || {
  echo "FAIL: credits spent $SPENT vs 200 answers $((${OK_COUNT:-0} + 1))" >&2; exit 1; }
[[ "${PROBE%% *}" == 200 ]] || { echo "FAIL: post-load request got ${PROBE%% *}" >&2; exit 1; }
echo "PASS"
