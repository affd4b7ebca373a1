"""train.py and evaluate.py as real processes to kill, and ways to wait for the moment to kill them.

Each run is a child of a multiprocessing fork server that imported the package once: a fresh process (its own
memory, signals and exit code, like `python train.py ...`) that starts in a fraction of a second instead of the
10-20 s that importing torch and Lightning takes on a busy CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

_PRELOAD = [
    "torch",
    "regionspot.training.cli",
    "regionspot.evaluation.cli",
    "regionspot.evaluation.runner",
    "regionspot.evaluation.caption_eval",
    "regionspot.evaluation.vqa_eval",
]
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(_PRELOAD)


def _train(argv: list[str]) -> None:
    import torch

    from regionspot.commands.train import main

    torch.set_num_threads(1)  # as the tests' one_cpu_thread: the same kernels, the same bits
    main(argv)


def _evaluate(argv: list[str], pause: float) -> None:
    """evaluate.py, pausing `pause` s after each image or batch so that a kill can land in the middle of a run."""
    import torch

    from regionspot.evaluation import caption_eval, cli, runner, vqa_eval

    torch.set_num_threads(1)
    recognise = runner._ImageRecogniser.__call__
    runner._ImageRecogniser.__call__ = lambda self, job: _paused(pause, recognise(self, job))
    caption = caption_eval.caption_batch
    caption_eval.caption_batch = lambda *args: _paused(pause, caption(*args))
    answer = vqa_eval.answer_batch
    vqa_eval.answer_batch = lambda *args: _paused(pause, answer(*args))
    cli.main(argv)


CHECKPOINT_NUMBERS = 1_000_000


def _write_checkpoints(path: str, started: str) -> None:
    """Save checkpoint 1 with AtomicCheckpointIO, then checkpoint 2 on a disk that stalls half-way (until killed)."""
    import io

    import torch

    from regionspot.training.fault_tolerance import AtomicCheckpointIO

    checkpoint_io, save = AtomicCheckpointIO(), torch.save
    checkpoint_io.save_checkpoint({"version": 1, "weights": torch.arange(CHECKPOINT_NUMBERS) * 1.0}, path)

    def stalling(obj, file) -> None:
        buffer = io.BytesIO()
        save(obj, buffer)
        file.write(buffer.getvalue()[: buffer.tell() // 2])
        file.flush()
        Path(started).touch()
        time.sleep(600)

    torch.save = stalling
    checkpoint_io.save_checkpoint({"version": 2, "weights": torch.zeros(CHECKPOINT_NUMBERS)}, path)


def start_checkpoint_writes(path: str, started: str) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=_write_checkpoints, args=(path, started), daemon=True)
    process.start()
    return process


def _paused(pause: float, value):
    time.sleep(pause)
    return value


def start_training(argv: list[str]) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=_train, args=(argv,), daemon=True)
    process.start()
    return process


def start_evaluation(argv: list[str], *, pause: float) -> multiprocessing.Process:
    process = _CONTEXT.Process(target=_evaluate, args=(argv, pause), daemon=True)
    process.start()
    return process


def wait_until(condition: Callable[[], bool], process: multiprocessing.Process, *, timeout: float = 120) -> None:
    """Poll `condition` every few ms; fail if `process` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not process.is_alive():
            raise AssertionError(f"the run ended (exit code {process.exitcode}) before the moment to kill it")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the moment to kill the run")
        time.sleep(0.005)


def kill(process: multiprocessing.Process, signum: int = signal.SIGKILL, *, timeout: float = 120) -> int:
    """Send `signum` (a real signal, default SIGKILL), wait for the process to end, return its exit code."""
    os.kill(process.pid, signum)
    process.join(timeout)
    if process.is_alive():
        process.kill()
        raise AssertionError(f"the run did not end within {timeout} s of signal {signum}")
    return process.exitcode


def latest_step(folder: Path) -> int:
    """The highest step of the `...step=N....ckpt` files in `folder` (-1 when there is none)."""
    steps = [int(m.group(1)) for p in folder.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


def finished_lines(path: Path) -> int:
    """Whole lines (ending in a newline) in `path`, 0 when it does not exist yet."""
    return path.read_bytes().count(b"\n") if path.is_file() else 0


class SignalAt(L.Callback):
    """Sends its own process `signum` when step `step` ends; records the handler the trainer installed for it and
    the step each `fit` started at (for a run of train.py inside the test process)."""

    def __init__(self, step: int = -1, signum: int = int(signal.SIGUSR1)) -> None:
        self.step, self.signum = step, signum
        self.handler = None
        self.started_at: list[int] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started_at.append(trainer.global_step)
        self.handler = signal.getsignal(self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while listed
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_with_stuck_workers(target: Callable, args: tuple, reading: Path) -> tuple[multiprocessing.Process, set[int]]:
    """Fork `target(*args)`, a run whose loader workers each touch `reading`/<pid> and then stay inside an image, and
    wait until 2 have; return the process and those workers' pids."""
    process = multiprocessing.get_context("fork").Process(target=target, args=args)  # a daemon may not have children
    process.start()
    wait_until(lambda: len(list(reading.iterdir())) >= 2, process)
    workers = {int(p.name) for p in reading.iterdir()}
    assert workers <= children(process.pid)
    return process, workers


def survivors_of_kill_9(process: multiprocessing.Process, workers: set[int]) -> list[int]:
    """SIGKILL `process`, give its `workers` 5 s to die, then kill those still alive (not to leave them to the rest of
    the session) and return them."""
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    return survivors
