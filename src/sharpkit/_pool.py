"""A local process pool that survives the death of one of its workers.

:class:`concurrent.futures.ProcessPoolExecutor` breaks as a whole when one
worker dies (``kill -9``, the out-of-memory killer): every task not finished
raises ``BrokenProcessPool``, the one whose worker died and the innocent ones
alike. :func:`run_pool` runs what was left in a fresh pool, first the tasks
that may have been running (the executor hands its workers at most
``jobs + 1`` tasks ahead, in order) one at a time, so that the one whose worker
dies again is known and reported, and the others finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["run_pool", "stop_pool"]

T = TypeVar("T")
Args = tuple[Any, ...]


def run_pool(
    fn: Callable[..., T],
    args: Sequence[Args],
    jobs: int,
    done: Callable[[T], None],
    lost: Callable[[Args], None],
) -> None:
    """Call ``done(fn(*a))`` for every ``a`` of ``args``, ``jobs`` processes at once.

    ``fn`` runs in spawned workers (:func:`~sharpkit._fs.init_worker`,
    :func:`~sharpkit._fs.run_in_worker`). A task whose worker died even when
    it ran alone is passed to ``lost``; every other task is run to its end.
    Ctrl-C, a signal or an exception stops the pool at once (:func:`stop_pool`)
    and goes on.
    """
    from sharpkit._fs import start_resource_tracker

    start_resource_tracker()  # before the pool starts one without SIGHUP immunity
    todo = list(args)
    while todo:
        broken = _one_pool(fn, todo, jobs, done)
        suspects, todo = broken[: jobs + 1], broken[jobs + 1 :]
        for a in suspects:  # alone: if its worker dies now, it was this task
            if _one_pool(fn, [a], 1, done):
                lost(a)


def _one_pool(
    fn: Callable[..., T], args: Sequence[Args], jobs: int, done: Callable[[T], None]
) -> list[Args]:
    """Run ``args`` in one pool; those left unfinished when it broke, in order."""
    import multiprocessing

    from sharpkit._fs import init_worker, run_in_worker

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=init_worker
    )
    broken: list[int] = []
    try:
        futures: dict[Future[T], int] = {
            pool.submit(run_in_worker, fn, *a): i for i, a in enumerate(args)
        }
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except BrokenProcessPool:
                broken.append(futures[fut])
                continue
            done(result)
    except BaseException:
        stop_pool(pool)
        raise
    if broken:
        stop_pool(pool)
    else:
        pool.shutdown(wait=True)
    return [args[i] for i in sorted(broken)]


def stop_pool(pool: ProcessPoolExecutor, grace: float = 20.0) -> None:
    """Cancel what has not started and end every worker (SIGTERM, then SIGKILL)."""
    # The executor has no public handle on its processes before Python 3.14's
    # terminate_workers(); shutdown() forgets them, so take them first.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in workers:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
