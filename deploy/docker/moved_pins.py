"""What the environment this runs in has at other versions than constraints.txt pins.

``make try-latest`` runs it in .venv-latest (the newest releases): each moved package as
``name: pinned -> installed``, and the packages installed there that no pin names.
Usage: python deploy/docker/moved_pins.py deploy/docker/constraints.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name)] = version.strip()
    return pins


def main(path: str) -> int:
    pins = read_pins(path)
    installed = {canonical(d.metadata["Name"]): d.version.split("+")[0]
                 for d in metadata.distributions()}
    moved = [f"{n}: {pins[n]} -> {v}" for n, v in sorted(installed.items())
             if n in pins and pins[n] != v]
    unpinned = sorted(n for n in installed if n not in pins and n != "caviar")
    print(f"{len(moved)} package(s) moved from {path}:", *moved, sep="\n  ")
    if unpinned:
        print("installed but not pinned:", *unpinned, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
