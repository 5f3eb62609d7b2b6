"""Facts about the machine a run executes on (read, never assumed)."""
from __future__ import annotations

import math
import os


def available_memory() -> int | None:
    """Bytes of memory the system can give a new allocation without swapping (Linux's
    ``MemAvailable``; the free physical pages elsewhere), or None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


MAX_SIDE = 16384  # pixels (or channels, or batch) along any input dimension
MAX_INPUT_ELEMENTS = 2**28  # 1 GiB of float32 input
TRACE_BYTES_PER_INPUT_ELEMENT = 4 * 64  # a vision model holds tens of input-sized maps; tracing about twice that


def input_shape_problem(shape: list[int] | tuple[int, ...]) -> str | None:
    """Why a model cannot be traced at input ``shape`` here (None if it can be tried): a
    dimension outside [1, MAX_SIDE], more than MAX_INPUT_ELEMENTS elements, or about
    ``TRACE_BYTES_PER_INPUT_ELEMENT`` bytes per input element beyond the memory that is free."""
    bad = [d for d in shape if not 1 <= d <= MAX_SIDE]
    if bad:
        return f"every dimension must be in [1, {MAX_SIDE}], got {bad[0]}"
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        return f"{elements:,} elements is above the {MAX_INPUT_ELEMENTS:,} compressor traces"
    need, free = elements * TRACE_BYTES_PER_INPUT_ELEMENT, available_memory()
    if free is not None and need > free:
        return f"tracing at this shape needs about {need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is free"
    return None


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (``/proc/cpuinfo`` on Linux), else the platform's."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
