#!/usr/bin/env bash
# Create .venv and install regionspot with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The venv takes ~7.1 GB (torch's CUDA build, the one whose torchvision is on this disk, brings 3.2 GB of
# NVIDIA libraries it will not start without, even on a CPU); pip's unpacking needs room beside it. Refuse up
# front, naming the folder, rather than fail minutes in with pip's "No space left on device".
NEEDED_GB=${REGIONSPOT_SETUP_NEEDED_GB:-9}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
    if [ "$free_kb" -lt $((NEEDED_GB * 1024 * 1024)) ]; then
        echo "setup.sh: $(pwd) has $((free_kb / 1024)) MB free; the venv needs about ${NEEDED_GB} GB." >&2
        echo "Free some disk (or set REGIONSPOT_SETUP_NEEDED_GB if you know better) and run it again." >&2
        exit 1
    fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned, so that no dependency resolves to another (multi-GB) torch release.
# --no-cache-dir: nothing here is downloaded twice, and a cache would hold a second copy of the wheels.
.venv/bin/pip install -q --no-cache-dir -c constraints.txt torch torchvision
.venv/bin/pip install -q --no-cache-dir -c constraints.txt -e ".[dev]"
