"""Checkpoints that are never half-written, and runs that resume where they stopped.

``AtomicCheckpointIO`` writes each checkpoint to a temporary file in the target directory,
flushes it to disk and renames it over the target (``os.replace`` is atomic on POSIX). A job
killed mid-write (time limit, pre-emption, SIGKILL) leaves the previous checkpoint intact, so
``last.ckpt`` always loads. The ``hardcl`` CLI installs it in every trainer it builds; remote paths (``s3://``...)
fall back to Lightning's own writer.

``ResumableState`` adds RNG states and the wandb run id to checkpoints; ``SignalCheckpoint``
checkpoints on SIGUSR1/SIGTERM; ``find_resumable_checkpoint`` / ``continue_loggers`` are what
``hardcl fit --resume auto`` (the default) uses to continue an unfinished run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, BinaryIO, Callable

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _temporary_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{pid}")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` left by writers on this host that no longer run (a
    SIGKILL mid-write skips the clean-up); the removed paths. Another host's files are left alone:
    its PIDs mean nothing here."""
    removed = []
    prefix = _temporary_name(path, 0).name[: -len("0")]
    for tmp in path.parent.glob(f"{prefix}*"):
        pid = tmp.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except PermissionError:  # alive, another user's
            pass
    return removed


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename it over ``path``:
    readers see the old file or the new one, never half of one. Temporary files of earlier
    writers that were killed mid-write are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def install_atomic_checkpoint_io(trainer: L.Trainer) -> None:
    """Make ``trainer`` write checkpoints with ``AtomicCheckpointIO``, unless a config chose its own
    checkpoint IO (anything but Lightning's plain ``TorchCheckpointIO`` is left alone)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def capture_rng_states() -> dict[str, Any]:
    """Every global RNG a training step draws from (augmentations, shuffling, MoCHi's draws, latents)."""
    import random

    import numpy as np

    # plain tensors, strings and numbers only: checkpoints stay loadable with torch.load(weights_only=True)
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumableState:
    """LightningModule hooks that make a resumed run continue exactly where it stopped.

    Lightning restores weights, optimisers, schedulers, loops and callbacks; this adds the
    global RNG states (so the data order, augmentations and every random draw after an
    epoch-boundary resume are those of the run that never stopped) and the Weights & Biases run
    id (so a requeued job logs into the same wandb run). Under DDP rank 0's states are saved.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_save_checkpoint", None)  # cooperative: mixins after this one add theirs
        if parent is not None:
            parent(checkpoint)
        checkpoint["rng_states"] = capture_rng_states()
        trainer = getattr(self, "_trainer", None)
        for logger in getattr(trainer, "loggers", []) if trainer is not None else []:
            if type(logger).__name__ == "WandbLogger":
                checkpoint["wandb_run_id"] = logger.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])


LAST = "last.ckpt"
#: a run that ended by itself leaves this file in its checkpoint directory; the checkpoints there
#: older than it are never resumed (a checkpoint newer than it belongs to a later run there)
FINISHED = "run.finished"


def _completed_epochs(ckpt: dict[str, Any]) -> int:
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"])
    except (KeyError, TypeError):
        return int(ckpt.get("epoch", 0))


#: arguments added to a module after runs were saved without them, with the value those runs had
#: (``GANPretrain`` gained the methods' non-finite policy)
ADDED_ARGUMENTS: dict[str, Any] = {"on_nonfinite_loss": "raise"}


def _same_hparams(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    # the CLI's "_instantiator" names a function object; "_class_path" (the method) is compared;
    # a run saved before the GAN options became one ``gan`` argument, or before ADDED_ARGUMENTS, still matches
    from hardcl_lightning.gan import fold_legacy_gan_hparams  # here: gan -> data -> this module

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items() if k != "_instantiator"}
        return [norm(v) for v in value] if isinstance(value, (list, tuple)) else value

    def complete(hp: dict[str, Any]) -> Any:
        return norm({**ADDED_ARGUMENTS, **fold_legacy_gan_hparams(hp)})
    return complete(saved) == complete(current)


def find_resumable_checkpoint(roots: list[str | Path], hparams: dict[str, Any], max_epochs: int | None,
                              max_steps: int = -1) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint (``last.ckpt``, or any ``*.ckpt`` for configs without ``save_last``)
    under ``roots`` of a run with the same hyperparameters that has not finished (fewer completed
    epochs than ``max_epochs`` / fewer steps than ``max_steps``, and no newer ``FINISHED`` mark in
    its directory), with its contents; None when there is none. What requeued jobs resume from."""
    found = sorted({p.resolve() for r in roots if Path(r).is_dir() for p in Path(r).rglob("*.ckpt") if p.is_file()},
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        done = path.with_name(FINISHED)
        if done.exists() and done.stat().st_mtime >= path.stat().st_mtime:
            continue
        try:  # weights_only: a file found on disk is data; unpickling it must never run its code
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a foreign, damaged or code-carrying file is skipped, never fatal
            print(f"[resume] not resuming from {path}: it does not load as plain tensors and values "
                  f"(torch.load weights_only=True): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if not _same_hparams(ckpt.get("hyper_parameters", {}), hparams):
            continue
        unfinished = (max_epochs is not None and max_epochs > 0 and _completed_epochs(ckpt) < max_epochs) or (
            max_steps is not None and max_steps > 0 and int(ckpt.get("global_step", 0)) < max_steps)
        if unfinished:
            return path, ckpt
    return None


def check_checkpoint_method(path: str | Path, class_path: str) -> None:
    """Refuse a checkpoint of another method than ``class_path`` (the config's model), naming both:
    LightningCLI reads a ``--ckpt_path``'s hyperparameters, class included, over the config, so a
    MoCo v2 checkpoint given to a SimCLR config would train MoCo v2 under SimCLR's run. Read with
    ``weights_only`` and ``mmap``: nothing runs, and only what is read is loaded. A checkpoint that
    names no class (one not written by ``hardcl fit``) is left to Lightning."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"ckpt_path {str(path)!r} does not load as plain tensors and values (torch.load "
                         f"weights_only=True), so it is not read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    saved = ((ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}).get("_class_path")
    if saved and saved.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
        raise ValueError(f"ckpt_path {str(path)!r} is a checkpoint of {saved}, but the config's model is {class_path}: "
                         "give the checkpoint with its own run's config (config.yaml in its run directory), or train "
                         "this method without --ckpt_path")


def _logged_steps(ckpt: dict[str, Any]) -> int | None:
    """The logging step a checkpoint was written at (Lightning logs at ``_batches_that_stepped``)."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        return None


def continuing_csv_writer(log_dir: str, keep_until_step: int | None) -> Any:
    """Lightning's CSV ``ExperimentWriter`` for a resumed run: it deletes the ``metrics.csv`` it
    finds ("Previous log files ... will be deleted"), so a resumed run kept only the epochs after
    the stop. This one keeps the file's rows up to the checkpoint's logging step (the rows after it
    are logged again by the resumed run) and its columns, and appends."""
    import csv

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class ContinuingExperimentWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if not self._fs.isfile(self.metrics_file_path):
                return
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                keys = list(reader.fieldnames or [])
                rows = [r for r in reader if keep_until_step is None or not r.get("step")
                        or float(r["step"]) <= keep_until_step]
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
            self.metrics_keys = sorted(keys)

    return ContinuingExperimentWriter(log_dir)


def continue_loggers(loggers: list[Any], ckpt_path: Path, ckpt: dict[str, Any]) -> None:
    """Point the loggers at the resumed run: TensorBoard/CSV reuse its ``version_N`` directory (the
    CSV file keeps the rows logged before the checkpoint), Weights & Biases its run id (saved in
    the checkpoint by ``ResumableState``)."""
    version = next((p.name for p in ckpt_path.parents if p.name.startswith("version_")), None)
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger" and ckpt.get("wandb_run_id"):
            logger._id = ckpt["wandb_run_id"]
            logger._wandb_init.update(id=ckpt["wandb_run_id"], resume="allow")
        elif kind in ("TensorBoardLogger", "CSVLogger") and version is not None and getattr(logger, "_version", 0) is None:
            logger._version = int(version.split("_", 1)[1]) if version.split("_", 1)[1].isdigit() else version
            if kind == "CSVLogger" and getattr(logger, "_experiment", None) is None:
                logger._experiment = continuing_csv_writer(logger.log_dir, _logged_steps(ckpt))


STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def ignore_stop_signals_in_worker(worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: the job's stop signals are the main process's to handle.

    Schedulers, ``timeout`` and SLURM's ``--signal`` signal the whole process group. A DataLoader
    worker that dies of that SIGTERM makes the main process fail ("DataLoader worker ... is killed
    by signal") before ``SignalCheckpoint`` can write ``last.ckpt``. Here a worker blocks SIGTERM,
    SIGUSR1 and SIGINT and a daemon thread takes them with ``sigwaitinfo``: a SIGTERM from the
    main process itself (how it ends its workers) still ends the worker at once, as PyTorch's own
    worker handler does; the job's signals are dropped, and the main process checkpoints at the
    next batch boundary, then shuts its workers down. Where ``sigwaitinfo`` is missing (not
    Linux), SIGUSR1 and SIGINT are ignored and SIGTERM keeps its default.
    """
    import signal
    import threading

    signals = {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}
    if not hasattr(signal, "sigwaitinfo"):
        for s in signals - {signal.SIGTERM}:
            signal.signal(s, signal.SIG_IGN)
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # threads started from here on inherit the mask

    def take_signals() -> None:
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:
                os._exit(0)

    threading.Thread(target=take_signals, name="hardcl-stop-signals", daemon=True).start()


class SignalCheckpoint(L.Callback):
    """Checkpoint and stop at the next batch boundary or epoch end on SIGUSR1, SIGTERM or a first
    Ctrl-C (pre-emption, the scheduler's warning before a time limit, ``kill``): the run then
    resumes from ``last.ckpt`` with nothing lost, and the process exits with 128 + the signal's
    number (``hardcl``'s ``main``), so a scheduler does not take the stopped run for a finished one.
    A second Ctrl-C interrupts at once. Under SLURM with auto-requeue (``configs/trainer/slurm.yaml``)
    the requeue signal also requeues the job (``scontrol requeue``) once ``last.ckpt`` is written.

    These handlers replace Lightning's for the fit (installed when sanity checking or training
    starts, after Lightning's, and never chained to them): Lightning's SIGTERM handler broadcasts
    over the process group from inside the signal handler and re-sends SIGTERM to the other ranks,
    which hung or aborted DDP runs signalled as a group, and its fit loop then ends the run with
    exit code 0 and no checkpoint when the signal lands between an epoch's last batch and the next
    one; its SLURM handler would save an ``hpc_ckpt`` mid-step. Here a handler only records the
    signal; the ranks agree at the next batch end or epoch end (any rank signalled -> all save),
    outside the handler, so the collective save cannot hang. The datamodules' workers leave these
    signals to the main process (``ignore_stop_signals_in_worker``).

    The ``hardcl`` CLI adds it to every fit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved_path: Path | None = None
        self.requeue_signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        import signal

        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, as Python would
        self.received = signum
        if signum == signal.SIGINT:
            print("\n[hardcl] Ctrl-C: writing last.ckpt at the next batch boundary, then stopping "
                  "(Ctrl-C again to stop at once)", flush=True)

    def _install(self, trainer: Any) -> None:
        import signal
        import threading

        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        signals = [signal.SIGTERM, signal.SIGINT]
        env = trainer._accelerator_connector.cluster_environment
        if type(env).__name__ == "SLURMEnvironment" and getattr(env, "auto_requeue", False):
            self.requeue_signal = int(env.requeue_signal)
            signals.append(self.requeue_signal)
        elif hasattr(signal, "SIGUSR1"):
            signals.append(signal.SIGUSR1)
        for s in signals:
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handler)

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._install(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        cb = trainer.checkpoint_callback
        if self.received is None and not trainer.interrupted and trainer.is_global_zero and cb is not None and cb.dirpath:
            # a run that ended by itself (max_epochs/steps, early stopping) is complete: mark it
            Path(cb.dirpath).mkdir(parents=True, exist_ok=True)
            (Path(cb.dirpath) / FINISHED).touch()
        self._restore()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        import signal

        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def checkpoint_path(self, trainer: Any) -> Path:
        cb = trainer.checkpoint_callback
        directory = cb.dirpath if cb is not None and cb.dirpath else trainer.default_root_dir
        return Path(directory) / LAST

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._checkpoint_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # a signal that lands after the epoch's last batch (in its validation, say) is seen here
        self._checkpoint_if_signalled(trainer)

    def _checkpoint_if_signalled(self, trainer: Any) -> None:
        if self.saved_path is not None:
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = self.checkpoint_path(trainer)
        # ModelCheckpoint(save_last) must take this file for its own "last": otherwise its
        # on_train_end, seeing no last of its own yet, writes last-v1.ckpt beside it (after the stop,
        # with a loop state that resumes wrongly), and after a resume it would write beside it again
        owners = [cb for cb in trainer.checkpoint_callbacks if getattr(cb, "save_last", None)
                  and cb.dirpath and Path(cb.dirpath).resolve() == path.parent.resolve()]
        for cb in owners:
            cb.last_model_path = str(path)  # before saving: it is part of the saved callback state
        trainer.save_checkpoint(path)
        for cb in owners:
            if hasattr(cb, "_last_checkpoint_saved"):
                cb._last_checkpoint_saved = str(path)
        self.saved_path = path
        trainer.should_stop = True
        if self.received is None:  # another rank was signalled
            import signal

            self.received = int(signal.SIGTERM)
        if not trainer.is_global_zero:
            return
        print(f"[hardcl] signal {self.received}: checkpoint written to {path} at global step {trainer.global_step}; "
              "run the same command again to resume", flush=True)
        if self.received == self.requeue_signal:
            requeue_slurm_job()


def requeue_slurm_job() -> int:
    """``scontrol requeue`` this SLURM job (an array task as ``<array job>_<task>``); its exit status."""
    import subprocess

    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        print("[hardcl] cannot requeue: SLURM_JOB_ID is not set", flush=True)
        return 1
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        print("[hardcl] cannot requeue: scontrol is not on PATH; resubmit the same command to resume", flush=True)
        return 1
    print(f"[hardcl] requeued SLURM job {job}" if status == 0 else f"[hardcl] scontrol requeue {job} failed ({status})", flush=True)
    return status
