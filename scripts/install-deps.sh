#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine. Idempotent: a second run only
# checks. Called by scripts/test.sh (and so by CI); developers may run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# dig: the real DNS client of tests/dns_router.rs.
command -v dig >/dev/null || need_apt+=(dnsutils)
# The dashboard: npm builds its chart library (gateway/dashboard), and tests/dashboard.rs
# drives Debian's headless chromium with playwright-core; promtool checks the alert rules.
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
command -v promtool >/dev/null || need_apt+=(prometheus)
# tests/userdata_pg.rs starts a private PostgreSQL server (initdb, pg_ctl) for the user-data tier.
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || need_apt+=(postgresql)
if ((${#need_apt[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

# Python tools used by tests (third-party reference parsers and clients arrive with their
# issues); one venv for all of them, pinned in scripts/requirements-test.txt.
VENV=.venv
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s scripts/requirements-test.txt "$VENV/.installed" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt "$VENV/.installed"
fi
# The Python client package (clients/python), editable so its tests run this tree's code.
if ! "$VENV/bin/python" -c 'import tickmesh_client, os, sys; sys.exit(0 if os.path.realpath(tickmesh_client.__file__).startswith(os.path.realpath("clients/python")) else 1)' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -e clients/python
fi

# npm packages, pinned by their package-lock.json files (npm ci only when the lock changed).
for dir in gateway/dashboard tests/browser; do
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed" 2>/dev/null; then
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.installed"
  fi
done

rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt 2>/dev/null || true
cargo clippy --version >/dev/null
cargo fmt --version >/dev/null
