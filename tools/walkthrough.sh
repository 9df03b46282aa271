#!/usr/bin/env bash
# Does what the README tells a new user, end to end, on the tiny fixture models (no Hub): build,
# make a key, start `glimpse serve` on a free loopback port, run the README's curl examples
# (upload and url= for CLIP, upload for ViT, /docs, /openapi.json), run the README's own code blocks
# as written (its curl lines, the Node and Python examples; a wrong key too), check every answer's shape,
# stop the server, run `glimpse classify --json` and bulk mode. Exits non-zero on the first failure.
#
#   tools/walkthrough.sh                  # debug build (what `cargo test` already built)
#   PROFILE=release tools/walkthrough.sh  # the README's `cargo run --release`
#   GLIMPSE_BIN=path/to/glimpse tools/walkthrough.sh   # no build
#
# Needs curl and python3 (the shape checks, a free port, a throwaway file server for url=).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

PROFILE="${PROFILE:-dev}"
FIX="$ROOT/tests/fixtures"
CLIP_MODEL="$FIX/models/clip-tiny"
VIT_MODEL="$FIX/models/vit-tiny"
IMAGE="$FIX/images/motorcycle.jpg"
TMP=""
SERVER_PID=""
FILES_PID=""
checks=0

say() { echo "walkthrough: $*"; }
fail() {
  echo "walkthrough: FAILED: $*" >&2
  if [ -n "$TMP" ] && [ -s "$TMP/serve.log" ]; then
    echo "walkthrough: last lines of the server log:" >&2
    tail -n 30 "$TMP/serve.log" >&2
  fi
  exit 1
}
ok() {
  checks=$((checks + 1))
  say "ok - $*"
}

# check_json NAME FILE CODE: FILE parses as JSON into `v`, then the Python asserts in CODE hold.
check_json() {
  local name="$1" file="$2" code="$3"
  python3 - "$file" "$code" <<'PY' || fail "$name: $(head -c 600 "$file")"
import json, sys
v = json.load(open(sys.argv[1]))
exec(sys.argv[2], {"v": v})
PY
  ok "$name"
}

# The README's answer: result, confidence, model, predictions (highest first), modelId, timingMs.
ANSWER='
assert set(v) >= {"result", "confidence", "model", "predictions", "modelId", "timingMs"}, sorted(v)
p = v["predictions"]
assert p and all(set(x) == {"label", "score"} for x in p), p
assert v["result"] == p[0]["label"] and v["confidence"] == p[0]["score"]
assert all(a["score"] >= b["score"] for a, b in zip(p, p[1:])), "not sorted"
assert abs(sum(x["score"] for x in p) - 1) < 1e-3, "scores do not sum to 1"
assert isinstance(v["timingMs"], (int, float)) and v["timingMs"] >= 0
'
CLIP_ANSWER="$ANSWER"'
assert v["model"] == "clip"
'
VIT_ANSWER="$ANSWER"'
assert v["model"] == "vit" and len(p) == 6, p
im = v["imagenet"]
assert len(im) == 5 and all(set(x) == {"label", "score", "category"} for x in im), im
'

command -v curl >/dev/null || fail "curl is needed"
command -v python3 >/dev/null || fail "python3 is needed"

if [ -n "${GLIMPSE_BIN:-}" ]; then
  BIN="$GLIMPSE_BIN"
  say "using $BIN"
elif [ "$PROFILE" = release ]; then
  say "building glimpse (release)"
  cargo build --release -p glimpse --quiet || fail "cargo build --release -p glimpse"
  BIN="$ROOT/target/release/glimpse"
else
  say "building glimpse (dev)"
  cargo build -p glimpse --quiet || fail "cargo build -p glimpse"
  BIN="$ROOT/target/debug/glimpse"
fi

TMP="$(mktemp -d)"
cleanup() {
  # Only the processes this script started, by id.
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$FILES_PID" ]; then kill "$FILES_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# call URL OUT [curl args...]: fetch URL into OUT; the status must be 200.
call() {
  local url="$1" out="$2" status
  shift 2
  status="$(curl -sS -o "$out" -w '%{http_code}' "$@" "$url")" || fail "curl $url"
  [ "$status" = 200 ] || fail "$url answered $status: $(head -c 600 "$out")"
}

# Nothing from the caller's environment or a config file changes what the README promises.
unset GLIMPSE_CONFIG GLIMPSE_ADMIN_TOKEN GLIMPSE_SHARDS JOB_COMPLETION_INDEX
export HF_HUB_OFFLINE=1
export GLIMPSE_DATABASE_URL="sqlite://$TMP/glimpse.db"
export GLIMPSE_CLIP_MODEL="$CLIP_MODEL" GLIMPSE_VIT_MODEL="$VIT_MODEL"

# --- README: make a key (shown once) ---
"$BIN" keys create --credits 100 --name walkthrough --json >"$TMP/key.json" || fail "keys create"
check_json "keys create --json" "$TMP/key.json" '
assert set(v) >= {"id", "key", "name", "credits"}, v
assert v["name"] == "walkthrough" and v["credits"] == 100 and v["key"].startswith("gk_"), v
'
KEY="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$TMP/key.json")"

# --- README: start the server ---
PORT="$(free_port)"
BASE="http://127.0.0.1:$PORT"
# The url= example fetches from a loopback file server, so let the server reach loopback.
GLIMPSE_BIND="127.0.0.1:$PORT" GLIMPSE_ALLOW_PRIVATE_URLS=true "$BIN" serve >"$TMP/serve.log" 2>&1 &
SERVER_PID=$!
say "serve on $BASE (pid $SERVER_PID)"
for _ in $(seq 1 300); do
  kill -0 "$SERVER_PID" 2>/dev/null || fail "glimpse serve exited during start"
  if curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null; then break; fi
  sleep 0.2
done
grep -q "playground http://127.0.0.1:$PORT/ , API docs http://127.0.0.1:$PORT/docs" "$TMP/serve.log" \
  || fail "the start-up log does not name the playground and /docs URLs"
ok "start-up log names the playground and /docs"
call "$BASE/readyz" "$TMP/ready.json"
check_json "/readyz" "$TMP/ready.json" 'assert v["status"] == "ready", v'
call "$BASE/healthz" "$TMP/health.json"
check_json "/healthz" "$TMP/health.json" 'assert v["status"] == "ok", v'

# --- README: CLIP upload with the default labels ---
call "$BASE/api/image-classification/clip?labels=car,document,motorcycle,truck,person,other" "$TMP/clip.json" \
  -X POST -H "X-API-Key: $KEY" -F "image=@$IMAGE"
check_json "POST clip (upload)" "$TMP/clip.json" "$CLIP_ANSWER"'
assert sorted(x["label"] for x in p) == sorted("car,document,motorcycle,truck,person,other".split(",")), p
'

# --- README: ViT upload ---
call "$BASE/api/image-classification/vit" "$TMP/vit.json" -X POST -H "X-API-Key: $KEY" -F "image=@$IMAGE"
check_json "POST vit (upload)" "$TMP/vit.json" "$VIT_ANSWER"

# --- README: CLIP by url= (a loopback file server stands in for example.com) ---
FILES_PORT="$(free_port)"
python3 -m http.server "$FILES_PORT" --bind 127.0.0.1 --directory "$FIX/images" >"$TMP/files.log" 2>&1 &
FILES_PID=$!
for _ in $(seq 1 50); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$FILES_PORT/motorcycle.jpg" 2>/dev/null; then break; fi
  sleep 0.1
done
call "$BASE/api/image-classification/clip?url=http://127.0.0.1:$FILES_PORT/motorcycle.jpg&labels=car,document,other" \
  "$TMP/clip_url.json" -H "X-API-Key: $KEY"
check_json "GET clip (url=)" "$TMP/clip_url.json" "$CLIP_ANSWER"'
assert sorted(x["label"] for x in p) == ["car", "document", "other"], p
'
# --- README's own code blocks, as written: each curl line of the "Using it" block, the Node and the
# Python examples, with only the host, the image path and example.com swapped for this run. Each
# runs with the key (an answer) and with a wrong key (the 401 JSON, in every client). ---
python3 - "$ROOT/README.md" "$TMP" "$BASE" "$IMAGE" "http://127.0.0.1:$FILES_PORT/motorcycle.jpg" <<'PY' \
  || fail "extracting the README's code blocks"
import re, sys
readme, tmp, base, image, url = sys.argv[1:6]
text = open(readme).read()
blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
def swap(code):
    return (code.replace("http://127.0.0.1:8080", base).replace("/path/to/image.jpg", image)
            .replace("https://example.com/image.jpg", url))
using = text.index("## Using it")
sh = next(c for lang, c in re.findall(r"```(\w+)\n(.*?)```", text[using:], re.S) if lang == "sh" and "curl " in c)
curls = [c.strip() for c in re.split(r"\n(?=curl )", sh.replace("\\\n", " ")) if c.strip().startswith("curl ")]
assert len(curls) == 3, curls
for i, c in enumerate(curls):
    open(f"{tmp}/readme_curl_{i}.sh", "w").write(swap(c.split("\n")[0]) + "\n")
js = [c for lang, c in blocks if lang == "js"]
py = [c for lang, c in blocks if lang == "python"]
assert len(js) == 1 and len(py) == 1, (len(js), len(py))
open(f"{tmp}/readme.mjs", "w").write(swap(js[0]))
open(f"{tmp}/readme.py", "w").write(swap(py[0]))
PY
# readme_out NAME FILE CODE: the client printed `STATUS JSON-or-dict`; check it as `v` and `status`.
readme_out() {
  local name="$1" file="$2" code="$3"
  python3 - "$file" "$code" <<'PY' || fail "$name: $(head -c 600 "$file")"
import ast, json, sys
status, _, rest = open(sys.argv[1]).read().strip().partition(" ")
try:
    v = json.loads(rest)
except ValueError:
    v = ast.literal_eval(rest)
exec(sys.argv[2], {"v": v, "status": int(status)})
PY
  ok "$name"
}
for i in 0 1 2; do
  GLIMPSE_KEY="$KEY" sh "$TMP/readme_curl_$i.sh" >"$TMP/readme_curl_$i.json" 2>"$TMP/readme_curl_$i.err" \
    || fail "README curl $i: $(cat "$TMP/readme_curl_$i.err")"
  if grep -q "/vit" "$TMP/readme_curl_$i.sh"; then want="$VIT_ANSWER"; else want="$CLIP_ANSWER"; fi
  check_json "README curl example $((i + 1))" "$TMP/readme_curl_$i.json" "$want"
  GLIMPSE_KEY=gk_wrong sh "$TMP/readme_curl_$i.sh" >"$TMP/readme_curl_bad.json" 2>/dev/null \
    || fail "README curl $i with a wrong key"
  check_json "README curl example $((i + 1)), wrong key: 401 JSON" "$TMP/readme_curl_bad.json" \
    'assert v["code"] == "UNAUTHORIZED", v'
done
if command -v node >/dev/null; then
  GLIMPSE_KEY="$KEY" node "$TMP/readme.mjs" >"$TMP/readme_node.out" 2>&1 || fail "README Node: $(cat "$TMP/readme_node.out")"
  readme_out "README Node example" "$TMP/readme_node.out" "assert status == 200$(printf '\n')$CLIP_ANSWER"
  GLIMPSE_KEY=gk_wrong node "$TMP/readme.mjs" >"$TMP/readme_node.out" 2>&1 || fail "README Node, wrong key: $(cat "$TMP/readme_node.out")"
  readme_out "README Node example, wrong key: 401 JSON" "$TMP/readme_node.out" \
    'assert status == 401 and v["code"] == "UNAUTHORIZED", v'
else
  fail "node is needed (the README's Node example)"
fi
GLIMPSE_KEY="$KEY" python3 "$TMP/readme.py" >"$TMP/readme_py.out" 2>&1 || fail "README Python: $(cat "$TMP/readme_py.out")"
readme_out "README Python example" "$TMP/readme_py.out" "assert status == 200$(printf '\n')$CLIP_ANSWER"
GLIMPSE_KEY=gk_wrong python3 "$TMP/readme.py" >"$TMP/readme_py.out" 2>&1 || fail "README Python, wrong key: $(cat "$TMP/readme_py.out")"
readme_out "README Python example, wrong key: 401 JSON" "$TMP/readme_py.out" \
  'assert status == 401 and v["code"] == "UNAUTHORIZED", v'

kill "$FILES_PID" 2>/dev/null || true
wait "$FILES_PID" 2>/dev/null || true
FILES_PID=""
# The same image uploaded gives the same scores.
call "$BASE/api/image-classification/clip?labels=car,document,other" "$TMP/clip_same.json" \
  -X POST -H "X-API-Key: $KEY" -F "image=@$IMAGE"
python3 - "$TMP/clip_url.json" "$TMP/clip_same.json" <<'PY' || fail "url= and upload disagree"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
sa = {x["label"]: x["score"] for x in a["predictions"]}
sb = {x["label"]: x["score"] for x in b["predictions"]}
assert sa.keys() == sb.keys() and all(abs(sa[k] - sb[k]) < 1e-6 for k in sa), (sa, sb)
PY
ok "url= and upload give the same scores"

# --- README: errors are {"message","code"} ---
status="$(curl -sS -o "$TMP/unauth.json" -w '%{http_code}' -X POST -F "image=@$IMAGE" \
  "$BASE/api/image-classification/vit")" || fail "curl without a key"
[ "$status" = 401 ] || fail "no key answered $status, not 401"
check_json "no key: 401 UNAUTHORIZED" "$TMP/unauth.json" 'assert v["code"] == "UNAUTHORIZED" and v["message"], v'

# Nine paid calls so far (four typed here, five from the README's blocks): the balance says so.
call "$BASE/api/account" "$TMP/account.json" -H "X-API-Key: $KEY"
check_json "GET /api/account (9 credits spent)" "$TMP/account.json" 'assert v["credits"] == 91, v'

# --- README: Swagger UI and the schema ---
call "$BASE/docs" "$TMP/docs.html"
grep -qi "swagger" "$TMP/docs.html" || fail "/docs is not the Swagger UI page"
ok "/docs"
call "$BASE/openapi.json" "$TMP/openapi.json"
check_json "/openapi.json" "$TMP/openapi.json" '
assert v["openapi"].startswith("3."), v.get("openapi")
for path in ("/api/image-classification/clip", "/api/image-classification/vit"):
    assert path in v["paths"], sorted(v["paths"])
'

# --- stop the server: SIGTERM drains and exits 0 ---
kill -TERM "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
SERVER_PID=""
[ "$rc" = 0 ] || fail "glimpse serve exited $rc after SIGTERM"
ok "serve stops cleanly on SIGTERM"

# --- README: locally, without a server ---
"$BIN" classify clip "$IMAGE" --labels cat,dog --json --model "$CLIP_MODEL" >"$TMP/local_clip.json" \
  || fail "classify clip --json"
check_json "classify clip --json" "$TMP/local_clip.json" "$CLIP_ANSWER"'
assert sorted(x["label"] for x in p) == ["cat", "dog"], p
'
"$BIN" classify vit "$IMAGE" --json --model "$VIT_MODEL" >"$TMP/local_vit.json" || fail "classify vit --json"
check_json "classify vit --json" "$TMP/local_vit.json" "$VIT_ANSWER"

# --- bulk mode over the fixture images, in two shards ---
for i in 0 1; do
  "$BIN" classify vit --input-dir "$FIX/images" --output "$TMP/bulk/results-$i.jsonl" --shard "$i/2" \
    --model "$VIT_MODEL" 2>"$TMP/bulk-$i.log" || fail "bulk shard $i/2: $(cat "$TMP/bulk-$i.log")"
done
cat "$TMP"/bulk/results-*.jsonl >"$TMP/bulk.jsonl"
python3 - "$TMP/bulk.jsonl" "$FIX/images" <<'PY' || fail "bulk results"
import json, os, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
files = sorted(f for f in os.listdir(sys.argv[2]) if os.path.isfile(os.path.join(sys.argv[2], f)))
assert sorted(l["file"] for l in lines) == files, "each fixture image exactly once"
assert all(l["model"] == "vit" and len(l["imagenet"]) == 5 for l in lines)
PY
ok "classify --input-dir: shards 0/2 + 1/2 cover every image once"

say "all $checks checks passed"
