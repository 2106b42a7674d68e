"""Worker processes owned by this process: run tasks in ``spawn`` workers, stop them cleanly.

:func:`run_tasks` is the local backend of sweeps. It is a deliberately small pool with no
threads: every worker is a ``spawn`` process with one duplex pipe; this process sends it a task,
the worker answers with ``target(task)``, and this process waits on the pipes and on the
processes' sentinels with :func:`multiprocessing.connection.wait`. Every worker is joined, or
killed, before :func:`run_tasks` returns or raises, so nothing is left for interpreter exit to
wait on. (``concurrent.futures.ProcessPoolExecutor`` keeps a manager thread and a queue feeder
thread that are joined at exit; after a Ctrl-C that join could block, and a worker that died
broke the whole pool.)

Signals:

- workers start with SIGINT ignored: a Ctrl-C at a terminal reaches the whole process group, and
  only this process acts on it;
- in a worker, SIGTERM raises ``KeyboardInterrupt`` wherever the worker is. A task running then
  gets the chance to record itself as interrupted (sweeps write the trial's ``summary.json``);
  an idle worker simply exits;
- a worker whose parent dies (SIGKILL, say) exits within a second, mid-task or not;
- on ``KeyboardInterrupt`` in this process, :func:`run_tasks` sends SIGTERM to every worker,
  waits up to ``grace_s`` seconds for them to exit, kills those still alive, and re-raises. A
  second Ctrl-C during the wait kills them at once.
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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOST = None  # what ``on_done`` gets for a task whose worker died before answering


def _interrupt(signum, frame) -> None:  # pragma: no cover - runs in worker processes
    raise KeyboardInterrupt


def _exit_with_parent(parent: int) -> None:  # pragma: no cover - worker process
    """Watchdog thread: if the process that started this worker is gone (killed with SIGKILL,
    say), exit rather than finish a task nobody will collect."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker_main(conn: Connection, target: str, parent: int) -> None:  # pragma: no cover
    """A worker's loop: receive a task (``None``: exit), answer ``(True, target(task))`` or
    ``(False, 'Type: message')`` if ``target`` raised."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        while True:
            task = conn.recv()
            if task is None:
                return
            try:
                answer = (True, fn(task))
            except Exception as err:
                answer = (False, f"{type(err).__name__}: {err}")
            conn.send(answer)
    except (KeyboardInterrupt, EOFError, OSError):
        return  # stopped (SIGTERM), or this process went away
    finally:
        conn.close()


@contextmanager
def _child_environment(threads: int) -> Iterator[None]:
    """What a new worker inherits: SIGINT ignored (from the main thread only: ``signal`` may
    not be called elsewhere) and the BLAS/OpenMP thread counts, both restored afterwards."""
    main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    old_env = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    try:
        yield
    finally:
        for var, value in old_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if main:
            signal.signal(signal.SIGINT, old_handler)


@dataclass
class _Worker:
    process: Any  # a multiprocessing SpawnProcess
    conn: Connection
    task: Any = None
    busy: bool = field(default=False)


def _start_worker(target: str, threads: int) -> _Worker:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_worker_main, args=(child, target, os.getpid()), daemon=True,
                          name="catapults-worker")
    with _child_environment(threads):
        process.start()
    child.close()  # so that a dead worker reads as EOF on `parent`
    return _Worker(process, parent)


def _receive(w: _Worker) -> tuple[bool, Any] | None:
    """The worker's answer, or None if it died without one."""
    try:
        if w.conn.poll():
            return w.conn.recv()
    except (EOFError, OSError):
        pass
    return None


def _retire(workers: Iterable[_Worker], timeout: float) -> None:
    """Ask idle workers to exit, wait up to ``timeout`` seconds in all, kill what is left."""
    workers = list(workers)
    for w in workers:
        try:
            w.conn.send(None)
        except OSError:
            pass
    _reap(workers, time.monotonic() + timeout)


def _reap(workers: list[_Worker], deadline: float) -> None:
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()


def _stop(workers: list[_Worker], grace_s: float) -> None:
    """After Ctrl-C: SIGTERM every worker (a running task records itself as interrupted), wait
    up to ``grace_s`` for them to exit, then kill. A second Ctrl-C kills them at once."""
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
    try:
        _reap(workers, time.monotonic() + grace_s)
    except KeyboardInterrupt:
        _reap(workers, time.monotonic())
        raise


def run_tasks(tasks: Iterable[Any], target: str, *, workers: int, threads: int = 1,
              on_start: Callable[[Any, int], None] | None = None,
              on_done: Callable[[Any, tuple[bool, Any] | None, int], None] | None = None,
              grace_s: float = 30.0) -> None:
    """Run ``target(task)`` for every task in at most ``workers`` spawn processes.

    ``target`` is ``'module:function'`` (imported in each worker; the function must return a
    picklable value and should not raise). ``threads`` sets ``OMP_NUM_THREADS`` (and the MKL and
    OpenBLAS equivalents) in the workers. Callbacks run in this process:
    ``on_start(task, running)`` when a task is handed to a worker and
    ``on_done(task, answer, running)`` when it ends, where ``answer`` is ``(True, value)``,
    ``(False, 'ExceptionType: message')`` if ``target`` raised, or ``None`` (:data:`LOST`) if
    the worker died first (a replacement is started for the remaining tasks); ``running`` is
    the number of tasks then in flight. On ``KeyboardInterrupt`` the workers are stopped (see
    the module docstring) and it is raised again.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    queue = deque(tasks)
    pool: list[_Worker] = []
    try:
        while queue or any(w.busy for w in pool):
            for w in [w for w in pool if not w.busy and not w.process.is_alive()]:
                pool.remove(w)
                w.conn.close()
            while queue and sum(w.busy for w in pool) < workers:
                w = next((w for w in pool if not w.busy), None)
                if w is None:
                    w = _start_worker(target, threads)
                    pool.append(w)
                task = queue.popleft()
                try:
                    w.conn.send(task)
                except OSError:  # it died while idle: retire it, hand the task to another
                    queue.appendleft(task)
                    pool.remove(w)
                    _reap([w], time.monotonic())
                    continue
                w.task, w.busy = task, True
                if on_start is not None:
                    on_start(task, sum(x.busy for x in pool))
            busy = [w for w in pool if w.busy]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for w in busy:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                answer = _receive(w)
                task, w.task, w.busy = w.task, None, False
                if answer is LOST:
                    pool.remove(w)
                    _reap([w], time.monotonic() + 1.0)
                if on_done is not None:
                    on_done(task, answer, sum(x.busy for x in pool))
    except BaseException:  # Ctrl-C, or a callback failed: stop the workers, then raise
        _stop(pool, grace_s)
        raise
    _retire(pool, timeout=5.0)
