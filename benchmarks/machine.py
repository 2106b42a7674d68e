"""What the benchmarks report about the machine they ran on (imported by the bench_*.py
scripts, which run with this folder on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def record_header(threads: int, torch_version: str) -> dict[str, Any]:
    """The opening of every benchmark's record: the date and the machine it ran on (CPU model,
    cores, torch threads, versions, load average at the start)."""
    import datetime

    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "threads": threads,
                        "torch": torch_version, "python": platform.python_version(),
                        "loadavg_start": os.getloadavg()}}


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return v[3] + v[4], sum(v)


def wait_quiet(quiet: dict[str, Any]) -> None:
    """Before a timed call, wait at most ``quiet["max_wait_s"]`` seconds until the machine's
    busy fraction over a 0.2 s window is at most ``quiet.get("threshold", 0.1)`` (this process
    sleeps meanwhile: the fraction is the other processes'); adds the wait to
    ``quiet["waited_s"]`` and the fraction seen to ``quiet["busy"]``. Other users of a shared
    machine otherwise distort timings badly; the record says how busy it was."""
    if quiet["max_wait_s"] <= 0 or not os.path.exists("/proc/stat"):
        return
    t0 = time.perf_counter()
    busy = 1.0
    while time.perf_counter() - t0 < quiet["max_wait_s"]:
        i0, a0 = _cpu_times()
        time.sleep(0.2)
        i1, a1 = _cpu_times()
        busy = 1.0 - (i1 - i0) / max(1, a1 - a0)
        if busy <= quiet.get("threshold", 0.1):
            break
    quiet["waited_s"] += time.perf_counter() - t0
    quiet["busy"].append(round(busy, 3))


def save_result(res: dict[str, Any], path: str | None, name: str, *, quick: bool) -> None:
    """Write ``res`` as JSON to ``path``, or when None to ``$BENCH_OUT/NAME[-quick].json`` (the
    convention of benchmarks/run.sh); nothing when neither is set."""
    if path is None and os.environ.get("BENCH_OUT"):
        path = os.path.join(os.environ["BENCH_OUT"], f"{name}-quick.json" if quick
                            else f"{name}.json")
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(res, fh, indent=1)


def quiet_summary(quiet: dict[str, Any]) -> dict[str, Any]:
    """What :func:`wait_quiet` saw over a run, for the result file: the wait allowed and spent,
    how many timed calls started with the machine busier than the threshold, the busiest."""
    thr = quiet.get("threshold", 0.1)
    return {"max_wait_s": quiet["max_wait_s"], "busy_threshold": thr,
            "waited_s": quiet["waited_s"], "timed_calls": len(quiet["busy"]),
            "timed_calls_started_busy": sum(b >= thr for b in quiet["busy"]),
            "max_busy": max(quiet["busy"], default=None)}


def footer(res: dict[str, Any], threads: int, torch_version: str) -> str:
    """The last line every benchmark prints: CPU, threads, torch, load average, total time."""
    m = res["machine"]
    return (f"\n{m['cpu']}, {threads} thread(s), torch {torch_version}, load average "
            f"{m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}, "
            f"total {res['total_s']:.0f} s")


def finish(res: dict[str, Any], quiet: dict[str, Any], t_start: float) -> None:
    """Close a result record: the load average at the end, what :func:`wait_quiet` saw
    (:func:`quiet_summary`) and the total time since ``t_start`` (``time.perf_counter()``)."""
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["machine"]["wait_idle"] = quiet_summary(quiet)
    res["total_s"] = time.perf_counter() - t_start


def targets_report(targets: dict[str, bool], title: str = "Targets") -> str:
    """One ``MET`` / ``MISSED`` line per target, under ``title``."""
    return "\n".join([f"\n{title}:"] + [f"  {'MET   ' if ok else 'MISSED'} {name}"
                                          for name, ok in targets.items()])
