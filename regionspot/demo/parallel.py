"""The demo's independent steps side by side: one process per job, the machine's cores shared out between them.

The demo's models are tiny, so a step is mostly Python and small kernels that one core runs as fast as two
(measured on the 2-core machine: one torch thread trains the demo's adapter faster than two). Two independent
jobs on one core each finish in about the time of the longer one.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

A = TypeVar("A")
T = TypeVar("T")


def cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS says, which a container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of `jobs` processes running at once: the cores shared out, at least one each."""
    return max(1, cores() // max(1, jobs))


def run_side_by_side(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run independent jobs at once, each in its own spawned process with `threads_per_job` torch threads; return
    their results in order. A job must pickle (a module-level function, or a functools.partial of one).

    Spawned, not forked: a forked child inherits the parent's torch thread pools in an undefined state.
    """
    if len(jobs) <= 1:
        return [job() for job in jobs]
    with _pool(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


@contextmanager
def running_beside(job: Callable[[], T]) -> Iterator[Future[T]]:
    """Start `job` in its own spawned process, on one core's share of torch threads, while the `with` block runs
    here; the block gets its future, and leaving the block waits for the job. A job must pickle, as above.

        with running_beside(partial(score, model)) as scored:
            train()
        scores = scored.result()
    """
    with _pool(1, threads=threads_per_job(2)) as pool:
        yield pool.submit(job)


def map_in_processes(
    function: Callable[[A], T], items: Iterable[A], *, workers: int, chunksize: int = 32
) -> Iterator[T]:
    """`map(function, items)` over `workers` spawned processes, results in order; `workers` <= 1 maps here."""
    if workers <= 1:
        yield from map(function, items)
        return
    with _pool(workers) as pool:
        yield from pool.map(function, items, chunksize=chunksize)


def _pool(workers: int, *, threads: int | None = None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_use_threads,
        initargs=(threads or threads_per_job(workers),),
    )


def _use_threads(threads: int) -> None:
    import torch  # here, not at the top: the data generator's workers never need it

    torch.set_num_threads(threads)
