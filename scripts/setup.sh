#!/usr/bin/env bash
# Create .venv and install regionspot with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned, so that no dependency resolves to another (multi-GB) torch release.
.venv/bin/pip install -q -c constraints.txt torch torchvision
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
