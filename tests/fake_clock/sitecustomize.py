"""On PYTHONPATH, a process whose wall clock reads FAKE_CLOCK_OFFSET_S seconds off (tests only).

Python imports `sitecustomize` at start-up, before any of the agent's code: `time.time` (which
`timeutil.now` reads) is then the real one plus the offset, while the kernel's monotonic and boot
clocks stay true, as when an operator or NTP sets a machine's clock.
"""

import os
import time

_offset = float(os.environ.get("FAKE_CLOCK_OFFSET_S") or 0)
if _offset:
    _real_time = time.time

    def _set_time() -> float:
        return _real_time() + _offset

    time.time = _set_time
