"""CPU time of a set of processes, for the benches' CPU-ms-per-frame columns (less sensitive to a
loaded machine than frames/s)."""
import psutil


def cpu_seconds(procs) -> float:
    """User + system CPU seconds of the processes (all their threads); gone processes count 0."""
    total = 0.0
    for p in procs:
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return total
