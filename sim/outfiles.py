"""Writing results safely: atomic replacement, stale temporaries cleaned, one writer per folder,
and worker processes that do not outlive the process that started them.

- `atomic_path(path)`: a context giving a temporary name beside `path` (`.NAME.PID.XXXX.tmp`); on
  success it is renamed over `path`, on failure removed. A write killed halfway leaves only a
  temporary, which the next write of the same file removes (`clean_stale_tmp`): one whose
  writer (the PID in its name) is gone, or, for names without a PID, one older than a minute.
- `FolderLock(folder)`: an exclusive `flock` on `FOLDER/.hssim.lock` while a sweep writes there;
  a second sweep on the same folder is refused at once with a one-line error.
- `worker_setup()`, `exit_with_parent()`: a worker closes the locks it inherited and asks the
  kernel to kill it when its parent dies
  (Linux `prctl(PR_SET_PDEATHSIG)`), else watches its parent from a thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".hssim.lock"
#: descriptors of the folder locks this process holds; a forked worker closes its copies
#: (`worker_setup`), or a killed sweep's workers would keep the folder locked while they exit
_LOCK_FDS: set[int] = set()
#: a temporary without a writer's PID in its name is stale once this old
STALE_TMP_S = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def clean_stale_tmp(path: Path) -> int:
    """Remove temporaries of `path` left by killed writes; returns how many."""
    folder = path.parent
    if not folder.is_dir():
        return 0
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:(\d+)\.)?[^.]*\.tmp")
    removed = 0
    now = time.time()
    for entry in os.scandir(folder):
        m = pattern.fullmatch(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m.group(1)) if m.group(1) else None
        try:
            stale = not _pid_alive(pid) if pid is not None and pid != os.getpid() else (
                pid is None and now - entry.stat().st_mtime > STALE_TMP_S)
            if stale:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[str]:
    """A temporary file name beside `path`, renamed over it when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, mode & ~umask)  # mkstemp makes files private; results are for sharing
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class FolderLock:
    """An exclusive lock on a results folder, held while a sweep writes to it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> FolderLock:
        import fcntl

        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            self._remove_if_unused()
            raise UserError(f"{self.folder}: another hssim sweep (pid {holder}) is writing to this folder; fix: "
                            "wait for it to finish, or give this one another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _LOCK_FDS.add(fd)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.fd is not None:
            if exc_type is not None:  # a sweep that failed before writing anything leaves no folder
                self._remove_if_unused()
            _LOCK_FDS.discard(self.fd)
            os.close(self.fd)  # closing releases the flock; the file stays (removing it would race)
            self.fd = None

    def _remove_if_unused(self) -> None:
        """Remove a folder this lock created if nothing but the lock is in it."""
        if not self.created:
            return
        try:
            if [e.name for e in os.scandir(self.folder)] == [LOCK_NAME]:
                os.unlink(self.folder / LOCK_NAME)
                self.folder.rmdir()
        except OSError:
            pass


def worker_setup() -> None:
    """What every worker process of hssim runs first: close the folder locks a fork copied from
    the parent (they are the parent's), and end when the parent ends."""
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    exit_with_parent()


def exit_with_parent() -> None:
    """Make this (worker) process end when its parent process ends.

    The parent is whoever started the worker (the sweep, or the fork server that forks for it,
    which itself ends with the sweep)."""
    parent_pid = os.getppid()
    if parent_pid == 1:  # already orphaned
        os._exit(1)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1  # linux/prctl.h
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the request took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
