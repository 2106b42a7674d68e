"""The worker pool (catapults.workers): answers, failures, dead workers, Ctrl-C, no leftovers.

Targets are standard-library functions, so these tests exercise the pool alone."""

import multiprocessing as mp
import time

import pytest

from catapults.workers import LOST, run_tasks


def collect(tasks, target, **kw):
    started, done = [], []
    run_tasks(tasks, target, on_start=lambda t, n: started.append((t, n)),
              on_done=lambda t, a, n: done.append((t, a)), **kw)
    return started, done


def test_answers_errors_and_running_counts():
    started, done = collect([4.0, 9.0, -1.0, 16.0], "math:sqrt", workers=2)
    assert [t for t, _ in started] == [4.0, 9.0, -1.0, 16.0]
    assert all(1 <= n <= 2 for _, n in started)
    answers = dict(done)
    assert answers[4.0] == (True, 2.0) and answers[9.0] == (True, 3.0)
    assert answers[16.0] == (True, 4.0)
    assert answers[-1.0] == (False, "ValueError: math domain error")
    assert mp.active_children() == []


def test_a_dead_worker_loses_only_its_task_and_is_replaced():
    # os._exit(n) kills the worker before it answers; os._exit("x") raises TypeError instead
    _, done = collect([3, "x", 5, "y"], "os:_exit", workers=1)
    assert [t for t, _ in done] == [3, "x", 5, "y"]
    assert done[0][1] is LOST and done[2][1] is LOST
    for _, answer in (done[1], done[3]):  # answered by the replacement workers
        assert answer == (False, "TypeError: 'str' object cannot be interpreted as an integer")
    _, done = collect([3, 4, "z"], "os:_exit", workers=2)
    assert {t: a for t, a in done}[3] is LOST and {t: a for t, a in done}[4] is LOST
    assert {t: a for t, a in done}["z"][0] is False
    assert mp.active_children() == []


def test_keyboard_interrupt_stops_running_workers_promptly():
    """Ctrl-C while tasks run (raised here from a callback): running workers get SIGTERM, which
    interrupts them; nothing waits for the 60 s tasks and no process is left."""
    t0 = time.monotonic()

    def on_done(task, answer, running):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_tasks([0.2, 60.0, 60.0, 60.0], "time:sleep", workers=2, on_done=on_done,
                  grace_s=20.0)
    assert time.monotonic() - t0 < 15.0
    assert mp.active_children() == []


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"):
        run_tasks([1.0], "math:sqrt", workers=0)


def test_a_target_that_cannot_be_imported_answers_each_task_once():
    """A task larger than a pipe buffer and a broken target: every task gets the import error
    (no endless restarting of workers)."""
    big = "x" * 300_000
    _, done = collect([big, "y"], "no_such_module:f", workers=1)
    assert [t for t, _ in done] == [big, "y"]
    for _, (ok, error) in done:
        assert not ok and error.startswith("cannot import no_such_module:f: ModuleNotFoundError")
    assert mp.active_children() == []


def test_stop_event_from_another_thread():
    import threading

    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_tasks([60.0, 60.0, 60.0], "time:sleep", workers=2, stop=stop)
    assert time.monotonic() - t0 < 15.0
    assert mp.active_children() == []
