"""Run a script in a Python where importing torch (or Lightning, open_clip, segment_anything, torchvision) fails, as
on a machine without them, and check afterwards that none of them was loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("torch", "lightning", "pytorch_lightning", "open_clip", "segment_anything", "torchvision")

_BLOCKER = f"""
import sys
BLOCKED = {BLOCKED!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked in this test")

sys.meta_path.insert(0, Blocker())
"""

_CHECK = """
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
"""


def run_without_torch(script: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `script` (dedented) with the blocked packages unimportable; its stdout ends in "ok" when it ran through
    and loaded none of them."""
    code = _BLOCKER + textwrap.dedent(script) + _CHECK
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
