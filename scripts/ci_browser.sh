#!/usr/bin/env bash
# What the gallery's browser test needs: Debian's chromium and Playwright's Python client
# (used with executable_path=/usr/bin/chromium; no browser is ever downloaded by Playwright).
# Idempotent and quiet: does nothing when both are already there. Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PY" ]]; then
  python3 -m venv .venv   # the same venv scripts/test.sh uses (it installs the rest)
  PY=.venv/bin/python
fi

if ! command -v chromium >/dev/null 2>&1 && [[ ! -x /usr/bin/chromium ]]; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "ci_browser: installing Debian chromium" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi

if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  echo "ci_browser: installing the playwright Python client" >&2
  "$PY" -m pip install -q --disable-pip-version-check "playwright>=1.40"
fi

# fail here (not later in pytest) if the browser cannot start headless
"$PY" - <<'PYEOF'
import sys
from playwright.sync_api import sync_playwright
args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=args, timeout=60_000)
    page = b.new_page()
    page.set_content("<p id=x>ok</p>")
    ok = page.inner_text("#x") == "ok"
    b.close()
sys.exit(0 if ok else 1)
PYEOF
