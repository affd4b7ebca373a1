"""Data loader workers that die with the process that started them."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """A DataLoader worker's `worker_init_fn`: the kernel kills the worker when its parent dies (Linux's
    PR_SET_PDEATHSIG), so that a kill -9 of the extractor or the trainer leaves no worker behind, holding its memory
    and /dev/shm. PyTorch's own check notices a dead parent only between two items, and a worker can spend minutes in
    one (a huge image, a stalled network file system). If the parent died before this ran, the worker exits at once.

    Args:
        parent: the pid of the process that makes the DataLoader (`os.getpid()` there).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("worker %d: prctl(PR_SET_PDEATHSIG) failed (errno %d)", worker_id, ctypes.get_errno())
    if os.getppid() != parent:
        os._exit(1)
