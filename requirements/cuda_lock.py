"""Check that the CUDA trainer lock (requirements/train-cuda.txt) still installs on a Linux x86_64 GPU machine.

CI cannot install CUDA wheels, but pip's resolver can decide whether the lock installs on a Linux x86_64 GPU
machine: a dry run for that platform (`--platform ... --only-binary :all: --target`) with a JSON report. Metadata
comes from PEP 658 files where the index serves them, else from HTTP range requests into each wheel
(`--use-feature=fast-deps`), so no CUDA wheel is downloaded. A pin that no longer exists, a conflict or a
dependency missing from the lock fails, naming the package. pip evaluates environment markers for the Python that
runs it; the cp312 pass checks that every pin has a wheel for CPython 3.12.

    python requirements/cuda_lock.py [LOCK]    # exit 1, naming what does not resolve
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "train-cuda.txt"
PYTHONS = ("3.11", "3.12")
GLIBC_MINOR = 34  # manylinux_2_34: RHEL/Rocky 9, Ubuntu 22.04 and newer (vLLM's deps need >= 2.31)
# Pure-Python projects published only as sdists: pip will not build them for a foreign platform, so the check
# confirms the pinned release exists and resolves their (pinned) dependencies through the other pins.
SDIST_ONLY = {"deepspeed": ["einops", "hjson", "msgpack", "ninja", "numpy", "packaging", "psutil", "py-cpuinfo",
                            "pydantic", "torch", "tqdm"]}  # fmt: skip
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_args(python: str) -> list[str]:
    """pip takes the platforms literally: every manylinux tag a glibc >= 2.34 x86_64 machine accepts."""
    plats = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 4, -1)]
    plats += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [a for p in plats for a in ("--platform", p)] + ["--python-version", python, "--implementation", "cp"]


def resolve(requirements: list[str], python: str) -> tuple[dict[str, str] | None, str]:
    """pip's dry-run resolution for Linux x86_64 / CPython `python`: ({name: version}, "") or (None, pip's error)."""
    with tempfile.TemporaryDirectory() as tmp:
        req, report = Path(tmp, "req.txt"), Path(tmp, "report.json")
        req.write_text("\n".join(requirements) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        cmd += ["--report", str(report), "--only-binary", ":all:", "--target", str(Path(tmp, "target"))]
        cmd += ["--use-feature=fast-deps", *platform_args(python), "-r", str(req)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return None, _pip_error(proc.stderr)
        installs = json.loads(report.read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}, ""


def _pip_error(stderr: str) -> str:
    """pip's own explanation (it names the package), without its progress and location warnings."""
    keep = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "  Link requires"))]
    start = next((i for i, ln in enumerate(keep) if ln.startswith("ERROR")), 0)
    return "\n".join(keep[start:][:25])


def read_pins(lock: Path) -> dict[str, tuple[str, str]]:
    """{canonical name: (name as written, version)} of a requirements file's `name==version` lines."""
    pins = {}
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = (m.group(1), m.group(2))
    return pins


def sdist_exists(name: str, version: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True, check=False
    ).stdout
    listed = re.search(r"Available versions: (.*)", out)
    return bool(listed) and version in [v.strip() for v in listed.group(1).split(",")]


def check(lock: Path) -> list[str]:
    """Problems that stop `lock` from installing on a GPU machine (empty when it resolves for every Python)."""
    pins = read_pins(lock)
    problems = []
    for name, deps in SDIST_ONLY.items():
        if name in pins and not sdist_exists(*pins[name]):
            problems.append(f"{pins[name][0]}=={pins[name][1]}: no such release on the index")
        missing = [d for d in deps if canonical(d) not in pins] if name in pins else []
        if missing:
            problems.append(f"{name} needs {', '.join(missing)}, which the lock does not pin")
    wheels = [f"{n}=={v}" for key, (n, v) in pins.items() if key not in SDIST_ONLY]
    for python in PYTHONS:
        resolved, error = resolve(wheels, python)
        if resolved is None:
            problems.append(f"cp{python.replace('.', '')}: pip cannot resolve {lock.name}:\n{error}")
            continue
        extra = sorted(f"{k}=={v}" for k, v in resolved.items() if k not in pins)
        if extra:
            problems.append(f"cp{python.replace('.', '')}: {lock.name} lacks dependencies: {', '.join(extra)}")
    return problems


def main(argv: list[str]) -> int:
    lock = Path(argv[0]) if argv else LOCK
    problems = check(lock)
    for problem in problems:
        print(f"CUDA lock: {problem}", file=sys.stderr)
    if not problems:
        print(f"{lock.name} resolves for Linux x86_64 / cp{', cp'.join(p.replace('.', '') for p in PYTHONS)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
