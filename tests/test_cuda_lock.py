"""requirements/cuda_lock.py fails, naming the package, when a lock no longer resolves for the GPU platform.

The real lock is checked by `make check-cuda-lock` (part of `make test`); these use tiny locks to keep pip quick.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "requirements" / "cuda_lock.py"


def _check(tmp_path: Path, *pins: str) -> subprocess.CompletedProcess:
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment line is ignored\n" + "\n".join(pins) + "\n")
    return subprocess.run([sys.executable, str(SCRIPT), str(lock)], capture_output=True, text=True, timeout=600)


def test_a_complete_lock_resolves(tmp_path):
    proc = _check(tmp_path, "packaging==26.3", "six==1.17.0")
    assert proc.returncode == 0, proc.stderr
    assert "resolves for Linux x86_64 / cp311, cp312" in proc.stdout


def test_a_release_that_does_not_exist_is_named(tmp_path):
    proc = _check(tmp_path, "packaging==26.3", "six==0.0.999")
    assert proc.returncode == 1
    assert "No matching distribution found for six==0.0.999" in proc.stderr


def test_a_dependency_missing_from_the_lock_is_named(tmp_path):
    proc = _check(tmp_path, "python-dateutil==2.9.0.post0")
    assert proc.returncode == 1
    assert "lacks dependencies: six==" in proc.stderr
