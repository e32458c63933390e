"""``kite.systemInfo``: disk, memory and platform facts (PROTOCOL.md §6.4)."""

from __future__ import annotations

import os
import sys
from typing import Any

_GO_OS = {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}


def _meminfo() -> tuple[int, int]:
    """(used bytes excluding buffers and cache, total bytes) from /proc/meminfo."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    total = values.get("MemTotal", 0)
    free = values.get("MemFree", 0) + values.get("Buffers", 0) + values.get("Cached", 0)
    return max(total - free, 0), total


def system_info() -> dict[str, Any]:
    """The result of ``kite.systemInfo``: disk values in KiB of ``/``, memory in bytes."""
    st = os.statvfs("/")
    disk_total = st.f_blocks * st.f_frsize // 1024
    disk_usage = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
    used, total = _meminfo()
    return {
        "state": "RUNNING",
        "diskUsage": disk_usage,
        "diskTotal": disk_total,
        "memoryUsage": used,
        "totalMemoryLimit": total,
        "homeDir": os.path.expanduser("~"),
        "uname": _GO_OS.get(sys.platform, sys.platform),
    }
