"""Runs a torchvision parity script (``_torchvision_parity.py``, ``_torchvision_keypoint_parity.py``) in
a subprocess and returns the per-image results it prints as its last line of JSON.

torchvision's Python package is installed by the set-up (``make test``) without its dependencies
into ``.venv/torchvision-site``, outside the environment's site-packages, so instaseg's call-time
dispatch never sees it; only the subprocess puts it on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("INSTASEG_TORCHVISION_SITE", ROOT / ".venv" / "torchvision-site"))

needs_torchvision = pytest.mark.skipif(not (SITE / "torchvision").is_dir(),
                                       reason=f"torchvision's Python package not in {SITE}")


def run_parity_script(name: str, timeout: float) -> list[dict]:
    """``python tests/weights/<name> SITE`` with instaseg importable; fails the test on a non-zero exit."""
    script = Path(__file__).with_name(name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), str(SITE)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
