#!/usr/bin/env bash
# One batch call vs single calls: start `glimpse serve` on loopback with a real-size CLIP folder,
# then time, from one client on one keep-alive connection, N single calls to
# /api/image-classification/clip and one call to /api/image-classification/clip/batch with the
# same N images (alternating, ROUNDS times), and print the medians and their ratio.
#
#   tools/bench/batch_vs_single.sh CLIP_DIR [N] [ROUNDS]
#
# CLIP_DIR: a Hugging Face CLIP folder (random real-size weights: tools/bench/make_random_clip.py).
# Env: GLIMPSE (default target/release/glimpse), IMAGE (default tests/fixtures/images/coffee.jpg),
# PORT (default 18081), and any GLIMPSE_* setting for the server (GLIMPSE_PRECISION, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIP_DIR=${1:?usage: batch_vs_single.sh CLIP_DIR [N] [ROUNDS]}
N=${2:-32}
ROUNDS=${3:-5}
GLIMPSE=${GLIMPSE:-target/release/glimpse}
IMAGE=${IMAGE:-tests/fixtures/images/coffee.jpg}
PORT=${PORT:-18081}
work=$(mktemp -d)
export GLIMPSE_DATABASE_URL="sqlite://$work/glimpse.db"
export GLIMPSE_BIND="127.0.0.1:$PORT"
export GLIMPSE_CLIP_MODEL="$CLIP_DIR"
export GLIMPSE_VIT_MODEL=${GLIMPSE_VIT_MODEL:-tests/fixtures/models/vit-tiny}
export GLIMPSE_MAX_BATCH_IMAGES=$N

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
echo "# precision ${GLIMPSE_PRECISION:-fp32}, $N x $(basename "$IMAGE") ($(stat -c %s "$IMAGE") bytes), $ROUNDS rounds"
python3 - "$PORT" "$key" "$IMAGE" "$N" "$ROUNDS" <<'PY'
import json, statistics, sys, time
import requests
port, key, image, n, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
base = f"http://127.0.0.1:{port}/api/image-classification/clip"
data = open(image, "rb").read()
s = requests.Session()
h = {"X-API-Key": key}
def single():
    r = s.post(base, headers=h, files={"image": ("i.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
def batch():
    files = [("image", (f"{i}.jpg", data, "image/jpeg")) for i in range(n)]
    r = s.post(base + "/batch", headers=h, files=files)
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == n and all("result" in x for x in r.json()["results"])
single(); batch()  # warm-up: label embeddings cached, connections open
singles, batches = [], []
for _ in range(rounds):
    t = time.perf_counter()
    for _ in range(n):
        single()
    singles.append(time.perf_counter() - t)
    t = time.perf_counter()
    batch()
    batches.append(time.perf_counter() - t)
ms = lambda xs: round(statistics.median(xs) * 1e3, 1)
print(json.dumps({"images": n, "singles_ms": ms(singles), "batch_ms": ms(batches),
                  "ratio": round(statistics.median(batches) / statistics.median(singles), 3),
                  "singles_all_ms": [round(x * 1e3) for x in singles],
                  "batch_all_ms": [round(x * 1e3) for x in batches]}))
PY
grep -o 'glimpse_batch_size_[a-z]*{le="[0-9+Inf]*"} [0-9]*\|glimpse_batch_size_count [0-9]*' \
  <(curl -s "http://127.0.0.1:$PORT/metrics") | tr '\n' ' '; echo
