#!/usr/bin/env bash
# The README's test command: set up .venv (pinned CPU torch 2.13.0 + every extra) and run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[train,export,coreml,heif,demo,dev]'
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
