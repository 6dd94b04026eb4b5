"""What this machine gives the engines: CPU threads and memory for the prefix cache's host
tier."""

from __future__ import annotations

import os

from server.settings import Settings


def threads(settings: Settings) -> int:
    return settings.model.n_threads or os.cpu_count() or 1


def ram_budget(ram_mb: int) -> int:
    """Bytes for the prefix cache's host tier: as configured, or a quarter of the memory
    available now, at most 4 GiB."""
    if ram_mb >= 0:
        return ram_mb << 20
    available = available_memory()
    return min(available // 4, 4 << 30) if available else 512 << 20


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # elsewhere (macOS): the physical memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
