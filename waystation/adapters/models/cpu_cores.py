"""How many physical CPU cores this machine has: llama.cpp's own default thread count.

Generation is bound by memory bandwidth and each core's vector units; a second hyperthread on a
core adds contention, not throughput, so llama.cpp (common/common.cpp,
`common_cpu_get_num_physical_cores`) runs one thread per physical core, and `[model] threads = 0`
means the same here. llama-cpp-python's own default (half the logical CPUs) is one thread on a
two-core machine without hyperthreads: about 0.64x of llama-server's speed there.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")


@functools.cache
def physical_cores() -> int:
    """One per core, counting hyperthread siblings once; the logical CPU count when unknown."""
    cores = None
    if sys.platform.startswith("linux"):
        cores = _linux_cores(SYS_CPU)
    elif sys.platform == "darwin":
        cores = _sysctl("hw.perflevel0.physicalcpu") or _sysctl("hw.physicalcpu")
    if cores is None:
        logical = os.cpu_count() or 1
        # llama.cpp's guess where it cannot ask (Windows without the API): half beyond four.
        cores = logical if logical <= 4 else logical // 2
    return max(1, cores)


def _linux_cores(root: Path) -> int | None:
    """Distinct `thread_siblings` masks, as llama.cpp counts them: one mask per physical core.

    It reads cpu0, cpu1, ... up to the first missing one; so does this (an offline CPU in the
    middle ends the count there, in both)."""
    siblings = set()
    cpu = 0
    while True:
        try:
            mask = (root / f"cpu{cpu}" / "topology" / "thread_siblings").read_text().strip()
        except OSError:
            break
        siblings.add(mask)
        cpu += 1
    return len(siblings) or None


def _sysctl(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return int(value) if out.returncode == 0 and value.isdigit() and int(value) > 0 else None
