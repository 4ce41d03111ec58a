"""Power cuts, as many as asked: tests/test_powercut_store.py (the store's real work in children
killed at random, the power cut in place: a few hundred ms a cut) and tests/test_powercut_load.py
(the real agent under POST /v1/tasks load: a few seconds a cut), their figures printed as a
Markdown report: cuts made (torn writes among them), acknowledged tasks, settles, receipts and
turns checked after every cut, lost (must be 0), repeated deliveries and their keys.

    python bench/powercut.py --cuts 1000 --agent-cuts 24

Needs FUSE (/dev/fuse, fuse3, libfuse3-dev, mfusepy): the tests skip, and this says so, without it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_powercut_store.py::test_power_cuts_in_the_stores_work_lose_nothing_acknowledged",
    "tests/test_powercut_load.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuts", type=int, default=1000, help="store-level power cuts (default 1000)")
    parser.add_argument("--agent-cuts", type=int, default=24, help="cuts of the whole agent (default 24)")
    parser.add_argument("--seed", type=int, help="replay a run's schedule (WAYSTATION_SOAK_SEED)")
    args = parser.parse_args()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's code
    env = {
        **os.environ,
        "WAYSTATION_POWERCUTS": str(args.cuts),
        "WAYSTATION_AGENT_POWERCUTS": str(args.agent_cuts),
        "PYTHONPATH": path,
    }
    if args.seed is not None:
        env["WAYSTATION_SOAK_SEED"] = str(args.seed)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    figures = [line for line in done.stdout.splitlines() if "power cuts:" in line]
    sys.stdout.write(f"# Power cuts ({time.monotonic() - started:.0f} s)\n\n")
    for line in figures:
        sys.stdout.write(f"- {line.split(': ', 1)[1]}\n")
    if done.returncode != 0 or not figures:
        sys.stdout.write("\n```\n" + done.stdout[-6000:] + done.stderr[-2000:] + "\n```\n")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
