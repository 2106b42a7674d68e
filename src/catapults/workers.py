"""Worker processes owned by this process: run tasks in ``spawn`` workers, stop them cleanly.

:func:`run_tasks` is the local backend of sweeps. It is a deliberately small pool with no
threads: every worker is a ``spawn`` process with one duplex pipe; this process sends it a task,
the worker answers with ``target(task)``, and this process waits on the pipes and on the
processes' sentinels with :func:`multiprocessing.connection.wait`. Every worker is joined, or
killed, before :func:`run_tasks` returns or raises, so nothing is left for interpreter exit to
wait on. (``concurrent.futures.ProcessPoolExecutor`` keeps a manager thread and a queue feeder
thread that are joined at exit; after a Ctrl-C that join could block, and a worker that died
broke the whole pool.)

Signals (POSIX; on Windows a stop terminates the workers without the interrupted record):

- workers start with SIGINT blocked, then ignore it: a Ctrl-C at a terminal reaches the whole
  process group, and only this process acts on it (a Ctrl-C that arrives while a worker is
  being started is delivered here right after, not lost);
- in a worker, the first SIGTERM raises ``KeyboardInterrupt`` wherever the worker is (later
  ones are ignored), so a running task can record itself as interrupted (sweeps write the
  trial's ``summary.json``); an idle worker simply exits;
- a worker whose parent dies (SIGKILL, say) exits within a second, mid-task or not;
- on ``KeyboardInterrupt`` in this process (or when ``stop`` is set), :func:`run_tasks` sends
  SIGTERM to every worker, waits up to ``grace_s`` seconds for them to exit, kills those still
  alive, and raises ``KeyboardInterrupt``. A second Ctrl-C during the wait kills them at once.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOST = None  # what ``on_done`` gets for a task whose worker died before answering
_SIGMASK = hasattr(signal, "pthread_sigmask")


# ---- the worker side --------------------------------------------------------------------------
def _interrupt(signum, frame) -> None:  # pragma: no cover - runs in worker processes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the task record its interruption
    raise KeyboardInterrupt


def _exit_with_parent(parent: int) -> None:  # pragma: no cover - worker process
    """Watchdog thread: if the process that started this worker is gone (killed with SIGKILL,
    say), exit rather than finish a task nobody will collect."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_main(conn: Connection, target: str, parent: int,
                 threads: int) -> None:  # pragma: no cover - worker process
    """A worker's loop: receive a task (``None``: exit), answer ``(True, target(task))`` or
    ``(False, 'Type: message')`` if ``target`` raised or cannot be imported."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    os.environ.update({v: str(threads) for v in THREAD_VARS})  # before the target imports torch
    try:
        try:
            module, name = target.split(":")
            fn = getattr(importlib.import_module(module), name)
        except Exception as err:
            fn, broken = None, f"cannot import {target}: {type(err).__name__}: {err}"
        while True:
            task = conn.recv()
            if task is None:
                return
            if fn is None:
                conn.send((False, broken))
                continue
            try:
                answer = (True, fn(task))
            except Exception as err:
                answer = (False, f"{type(err).__name__}: {err}")
            conn.send(answer)
    except (KeyboardInterrupt, EOFError, OSError):
        return  # stopped (SIGTERM), or this process went away
    finally:
        conn.close()


# ---- the pool ---------------------------------------------------------------------------------
@dataclass
class _Worker:
    process: Any  # a multiprocessing SpawnProcess
    conn: Connection
    task: Any = None
    busy: bool = False
    served: int = 0


def _start_worker(target: str, threads: int) -> _Worker:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_worker_main, args=(child, target, os.getpid(), threads),
                          daemon=True, name="catapults-worker")
    # the child inherits the signal mask: SIGINT stays blocked until it has set SIG_IGN;
    # here a SIGINT that arrives meanwhile is pending, and delivered when unblocked
    blocked = _SIGMASK and signal.SIGINT not in signal.pthread_sigmask(
        signal.SIG_BLOCK, {signal.SIGINT})
    try:
        process.start()
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    child.close()  # so that a dead worker reads as EOF on `parent`
    return _Worker(process, parent)


def _receive(w: _Worker) -> tuple[bool, Any] | None:
    """The worker's answer, or None if it died without one."""
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    except Exception as err:  # an answer that cannot be unpickled here
        return (False, f"unreadable answer: {type(err).__name__}: {err}")
    return None


def _reap(workers: list[_Worker], deadline: float) -> None:
    """Join the workers until ``deadline``, then kill those still alive."""
    try:
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()


def _retire(workers: list[_Worker], timeout: float) -> None:
    """Ask idle workers to exit, wait up to ``timeout`` seconds in all, kill what is left."""
    for w in workers:
        try:
            w.conn.send(None)
        except OSError:
            pass
    _reap(workers, time.monotonic() + timeout)


def _stop(workers: list[_Worker], grace_s: float) -> None:
    """After Ctrl-C: SIGTERM every worker (a running task records itself as interrupted), wait
    up to ``grace_s`` for them to exit, then kill. A second Ctrl-C kills them at once."""
    deadline = time.monotonic() + grace_s
    try:
        running = sum(w.busy for w in workers)
        if running:
            print(f"\nstopping {running} running task(s) (Ctrl-C again to kill them now)",
                  file=sys.stderr, flush=True)
        for w in workers:
            w.conn.close()  # a worker's last answer is not needed: results are on disk
            if w.process.is_alive():
                try:
                    os.kill(w.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
    except BaseException:
        deadline = time.monotonic()
        raise
    finally:
        _reap(workers, deadline)  # a Ctrl-C inside it ends the wait: the rest are killed


def run_tasks(tasks: Iterable[Any], target: str, *, workers: int, threads: int = 1,
              on_start: Callable[[Any, int], None] | None = None,
              on_done: Callable[[Any, tuple[bool, Any] | None, int], None] | None = None,
              grace_s: float = 30.0, stop: threading.Event | None = None) -> None:
    """Run ``target(task)`` for every task in at most ``workers`` spawn processes.

    ``target`` is ``'module:function'`` (imported in each worker; the function must return a
    picklable value and should not raise). ``threads`` sets ``OMP_NUM_THREADS`` (and the MKL and
    OpenBLAS equivalents) in the workers before ``target`` is imported. Callbacks run in this
    process: ``on_start(task, running)`` just before a task is handed to a worker and
    ``on_done(task, answer, running)`` when it ends, where ``answer`` is ``(True, value)``,
    ``(False, 'ExceptionType: message')`` if ``target`` raised (or could not be imported), or
    ``None`` (:data:`LOST`) if the worker died first (a replacement is started for the
    remaining tasks); ``running`` is the number of tasks then in flight.

    On ``KeyboardInterrupt``, or when ``stop`` (an event another thread may set; checked twice a
    second) is set, the workers are stopped (see the module docstring) and
    ``KeyboardInterrupt`` is raised. Tasks are sent whole through a pipe: keep them small.

    The dispatch loop, the interrupt handling and the final stop share the pool's state and
    must run in this order under one ``try``, so they stay in one function.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    queue = deque(tasks)
    pool: list[_Worker] = []
    try:
        while queue or any(w.busy for w in pool):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            for w in [w for w in pool if not w.busy and not w.process.is_alive()]:
                pool.remove(w)
                w.conn.close()
            while queue and sum(w.busy for w in pool) < workers:
                w = next((w for w in pool if not w.busy), None)
                if w is None:
                    w = _start_worker(target, threads)
                    pool.append(w)
                task = queue.popleft()
                w.task, w.busy = task, True
                if on_start is not None:
                    on_start(task, sum(x.busy for x in pool))
                try:
                    w.conn.send(task)
                except OSError:  # the worker is gone
                    pool.remove(w)
                    _reap([w], time.monotonic())
                    if w.served:  # it had been working: hand the task to another
                        queue.appendleft(task)
                    elif on_done is not None:  # it died starting: do not start more forever
                        on_done(task, LOST, sum(x.busy for x in pool))
            busy = [w for w in pool if w.busy]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                             timeout=None if stop is None else 0.5))
            for w in busy:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                answer = _receive(w)
                task, w.task, w.busy = w.task, None, False
                w.served += 1
                if answer is LOST:
                    pool.remove(w)
                    _reap([w], time.monotonic() + 1.0)
                if on_done is not None:
                    on_done(task, answer, sum(x.busy for x in pool))
    except BaseException:  # Ctrl-C, stop, or a callback failed: stop the workers, then raise
        _stop(pool, grace_s)
        raise
    _retire(pool, timeout=5.0)
