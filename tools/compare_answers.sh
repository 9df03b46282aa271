#!/usr/bin/env bash
# Are two builds' answers byte-identical? Serves the tiny fixture models with each `glimpse` binary
# in turn (temp SQLite, loopback port), sends the same calls (every fixture image to /clip with two
# label sets and to /vit, a few error calls), and `glimpse classify --json` over the same images; then
# diffs the bodies with `timingMs` removed (the only field that may differ).
#
#   tools/compare_answers.sh OLD/glimpse NEW/glimpse
#
# For refactors that must not change behaviour. Needs curl and python3. Exits 1 on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 OLD_GLIMPSE NEW_GLIMPSE" >&2; exit 2; }
FIX="$PWD/tests/fixtures"
OUT="$(mktemp -d)"
trap '[ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; rm -rf "$OUT"' EXIT
unset GLIMPSE_CONFIG GLIMPSE_ADMIN_TOKEN
export GLIMPSE_CLIP_MODEL="$FIX/models/clip-tiny" GLIMPSE_VIT_MODEL="$FIX/models/vit-tiny"
IMAGES=$(ls "$FIX"/images/*.{jpg,png,webp,gif,bmp} 2>/dev/null | sort)

# Strip timingMs from each JSON line of $1 in place.
strip() {
  python3 - "$1" <<'PY'
import json, sys
lines = []
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        lines.append(line.rstrip("\n"))
        continue
    if isinstance(v, dict):
        v.pop("timingMs", None)
    lines.append(json.dumps(v, sort_keys=True, ensure_ascii=False))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
}

run() {
  local bin="$1" dir="$OUT/$2"
  mkdir -p "$dir"
  export GLIMPSE_DATABASE_URL="sqlite://$dir/glimpse.db"
  local key port base
  key=$("$bin" keys create --credits 100000 --name compare --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  GLIMPSE_BIND="127.0.0.1:$port" "$bin" serve >"$dir/serve.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do curl -sf "$base/readyz" >/dev/null && break; sleep 0.1; done
  local call=(curl -s -H "X-API-Key: $key")
  for img in $IMAGES; do
    for labels in "car,person,motorcycle,document,animal,food" "a red bicycle,a cat,a city street at night"; do
      "${call[@]}" -F "image=@$img" -F "labels=$labels" "$base/api/image-classification/clip" >>"$dir/http.jsonl"
      echo >>"$dir/http.jsonl"
    done
    "${call[@]}" -F "image=@$img" "$base/api/image-classification/vit" >>"$dir/http.jsonl"
    echo >>"$dir/http.jsonl"
  done
  # A few refusals: their bodies are part of the contract too.
  "${call[@]}" -F "labels=car" "$base/api/image-classification/clip" >>"$dir/http.jsonl"; echo >>"$dir/http.jsonl"
  "${call[@]}" -F "image=@$FIX/images/motorcycle.jpg" -F "clipModel=nope" "$base/api/image-classification/clip" >>"$dir/http.jsonl"; echo >>"$dir/http.jsonl"
  "${call[@]}" -F "image=@$FIX/images/motorcycle.jpg" -F "labels=" "$base/api/image-classification/clip" >>"$dir/http.jsonl"; echo >>"$dir/http.jsonl"
  curl -s -H "X-API-Key: gk_wrong" "$base/api/image-classification/vit" >>"$dir/http.jsonl"; echo >>"$dir/http.jsonl"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  # shellcheck disable=SC2086
  "$bin" classify clip $IMAGES --labels "car,person,motorcycle" --json >"$dir/cli.jsonl" 2>/dev/null || true
  # shellcheck disable=SC2086
  "$bin" classify vit $IMAGES --json >>"$dir/cli.jsonl" 2>/dev/null || true
  strip "$dir/http.jsonl"
  strip "$dir/cli.jsonl"
}

run "$1" old
run "$2" new
n=$(cat "$OUT/new/http.jsonl" "$OUT/new/cli.jsonl" | grep -c . || true)
if diff -u "$OUT/old/http.jsonl" "$OUT/new/http.jsonl" && diff -u "$OUT/old/cli.jsonl" "$OUT/new/cli.jsonl"; then
  echo "compare_answers: $n answers byte-identical (timingMs aside)"
else
  echo "compare_answers: answers differ" >&2
  exit 1
fi
