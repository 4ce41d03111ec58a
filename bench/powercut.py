"""Power cuts under load, as many as asked: tests/test_powercut_load.py run for N cuts (default
1,000), its figures printed as a Markdown report: cuts made (torn writes among them), acknowledged
tasks checked after every cut, lost (must be 0), receipts checked, repeated deliveries.

    python bench/powercut.py --cuts 1000      # about 4 s a cut on a 2-core machine

Needs FUSE (/dev/fuse, fuse3, libfuse3-dev, mfusepy): the test skips, and this says so, without it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = Path("tests") / "test_powercut_load.py"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuts", type=int, default=1000, help="power cuts to make (default 1000)")
    parser.add_argument("--seed", type=int, help="replay a run's schedule (WAYSTATION_SOAK_SEED)")
    args = parser.parse_args()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's code
    env = {**os.environ, "WAYSTATION_POWERCUTS": str(args.cuts), "PYTHONPATH": path}
    if args.seed is not None:
        env["WAYSTATION_SOAK_SEED"] = str(args.seed)
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/test_powercut_load.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    figures = [line for line in done.stdout.splitlines() if "power cuts:" in line]
    sys.stdout.write(f"# Power cuts under load ({time.monotonic() - started:.0f} s)\n\n")
    for line in figures:
        sys.stdout.write(f"- {line.split(': ', 1)[1]}\n")
    if done.returncode != 0 or not figures:
        sys.stdout.write("\n```\n" + done.stdout[-6000:] + done.stderr[-2000:] + "\n```\n")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
