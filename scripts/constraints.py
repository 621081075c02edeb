"""constraints.txt: the exact library versions the committed reports were made with.

    python scripts/constraints.py write constraints.txt   # from this venv (pip freeze)
    python scripts/constraints.py check constraints.txt   # list what differs; exit 1 if anything does

`write` leaves out editable installs (kdgrid itself, the example plug-in) and CUDA wheels (nvidia-*, triton),
and drops local version labels (torch 2.13.0+cpu -> torch==2.13.0), so the file fits CPU and GPU machines.
`check` looks only at packages that are installed here: scripts/reports.sh then installs the pinned version of
each one that differs (`pip install -c constraints.txt NAME ...`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SKIP = re.compile(r"^(nvidia-|triton|cuda-)", re.IGNORECASE)
HEADER = (
    "# Exact versions the committed reports/ were made with (scripts/reports.sh brings the venv to them).\n"
    "# Regenerate after a deliberate upgrade: python scripts/constraints.py write constraints.txt\n"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def write(path: Path) -> None:
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    pins = []
    for line in frozen.splitlines():
        if "==" not in line or line.startswith("#") or SKIP.match(line):
            continue  # comments, direct references, CUDA wheels
        name, version = line.split("==", 1)
        pins.append(f"{name}=={version.split('+', 1)[0]}")
    path.write_text(HEADER + "\n".join(sorted(pins, key=canonical)) + "\n")


def check(path: Path) -> int:
    differ = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, want = line.split("==", 1)
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not needed here (e.g. a test extra); nothing to pin
        if have.split("+", 1)[0] != want:
            differ.append((name, have, want))
    for name, have, want in differ:
        print(f"{name}: installed {have}, {path.name} pins {want}", file=sys.stderr)
    if differ:
        print(" ".join(name for name, _, _ in differ))  # for `pip install -c constraints.txt $(...)`
    return 1 if differ else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    target = Path(sys.argv[2])
    if sys.argv[1] == "write":
        write(target)
    else:
        sys.exit(check(target))
