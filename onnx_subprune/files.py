"""Output files: every output of a command is checked before any work starts, written to a
temporary file beside its target, and all are renamed into place only once all were written.
On a failure or a signal (SIGINT, SIGTERM, SIGHUP) while writing, none is left behind.

Refused up front, with one line: an output that is one of the command's inputs or another
output (also through a symbolic or hard link), a folder, an existing target that is not a regular
file (a device such as /dev/null, a pipe, a socket, a link to one), a dangling symbolic link, a
missing or unwritable folder. New files get the mode the user's umask gives (0666 & ~umask); a
replaced file keeps its mode.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping

from .errors import SubpruneError

PathLike = str | os.PathLike
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_UMASK_LOCK = threading.Lock()


class Outputs:
    """The files one command writes, checked when constructed (before any work).

    ``outputs`` maps a label ("output", "report", "plot") to a path (None: not written);
    ``inputs`` maps a label ("model", "calibration data") to a file the command reads, which no
    output may be. :meth:`write` then writes them all or none.
    """

    def __init__(self, outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] = {}):
        self.given: dict[str, str] = {}
        self.targets: dict[str, Path] = {}
        self.inputs: list[tuple[str, PathLike]] = []
        for label, path in outputs.items():
            if path is not None:
                self.add(label, path)
        self.refuse_inputs(inputs)

    def add(self, label: str, path: PathLike) -> None:
        """One more output (the external data file of a model), checked like the others and
        against the inputs refused so far."""
        target = _check_target(label, path)
        for other, seen in self.targets.items():
            if _same_file(target, seen):
                raise SubpruneError(f"cannot write {label} {os.fspath(path)}: it is also the {other} "
                                    f"({self.given[other]}); give each output its own path")
        self.given[label], self.targets[label] = os.fspath(path), target
        for what, source in self.inputs:
            self._refuse(what, source)

    def refuse_inputs(self, inputs: Mapping[str, PathLike | Iterable[PathLike] | None]) -> None:
        """Fail when an output is one of ``inputs`` (label -> path, or several paths)."""
        for what, paths in inputs.items():
            if paths is None:
                continue
            for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
                self.inputs.append((what, path))
                self._refuse(what, path)

    def _refuse(self, what: str, path: PathLike) -> None:
        source = Path(os.path.realpath(path))
        for label, target in self.targets.items():
            if _same_file(target, source):
                raise SubpruneError(f"cannot write {label} {self.given[label]}: it is the {what} "
                                    f"being read ({os.fspath(path)}); choose another path")

    def write(self, contents: Mapping[str, bytes]) -> None:
        """Write ``contents`` (label -> bytes, one per output given) all or none: each to a
        temporary file beside its target, then every temporary file renamed onto its target."""
        missing = set(self.targets) - set(contents)
        if missing or set(contents) - set(self.targets):
            raise ValueError(f"contents for {sorted(contents)}, outputs {sorted(self.targets)}")
        temps: dict[str, str] = {}
        with _signals_raise():
            try:
                for label, data in contents.items():
                    _write_temp(label, self.given[label], self.targets[label], data, temps)
                _commit(self.given, self.targets, temps)
            except BaseException:
                for tmp in temps.values():
                    _unlink(tmp)
                raise


def check_writable(path: PathLike, label: str = "output") -> None:
    """Fail early, with one line, when ``path`` cannot be written (see :class:`Outputs`)."""
    _check_target(label, path)


def write_atomic(path: PathLike, data: bytes, label: str = "output") -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: never a partial file."""
    Outputs({label: path}).write({label: data})


def _check_target(label: str, path: PathLike) -> Path:
    """The real path an output will be renamed onto; a one-line error when it cannot be."""
    shown = os.fspath(path)
    prefix = f"cannot write {label} {shown}"
    if not shown:
        raise SubpruneError(f"cannot write {label}: the path is empty")
    try:
        info = os.stat(path)  # follows symbolic links: /dev/stdout is a pipe or a terminal
    except (FileNotFoundError, NotADirectoryError):
        info = None
        if os.path.lexists(path):
            raise SubpruneError(f"{prefix}: it is a symbolic link to a missing file") from None
    except OSError as exc:
        raise SubpruneError(f"{prefix}: {exc.strerror or exc}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise SubpruneError(f"{prefix}: it is a folder")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise SubpruneError(f"{prefix}: it exists and is not a regular file ({_kind(info.st_mode)}); "
                            f"outputs are written to a temporary file and renamed, which would replace it")
    target = Path(os.path.realpath(path))
    folder = target.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise SubpruneError(f"{prefix}: folder {Path(shown).parent} {problem}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SubpruneError(f"{prefix}: folder {Path(shown).parent} is not writable")
    return target


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _same_file(a: Path, b: Path) -> bool:
    """The same path, or two names of one existing file (hard link, case-folding file system)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _write_temp(label: str, shown: str, target: Path, data: bytes, temps: dict[str, str]) -> None:
    """A complete temporary copy of ``data`` beside ``target``, with the mode the target will
    have, recorded in ``temps`` as soon as it exists (the caller removes it on any failure)."""
    try:
        with _signals_blocked():  # no signal between creating the file and recording it
            fd, temps[label] = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise SubpruneError(f"cannot write {label} {shown}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _mode_for(target))
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise SubpruneError(f"cannot write {label} {shown}: {exc.strerror or exc}") from None


def _mode_for(target: Path) -> int:
    """The mode of the file ``target`` replaces, else the one ``open()`` gives: 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _commit(given: Mapping[str, str], targets: Mapping[str, Path], temps: dict[str, str]) -> None:
    """Rename every temporary file onto its target, signals held back; if one rename fails, the
    targets already replaced get their previous content back (or are removed when new)."""
    with _signals_blocked():
        done: list[tuple[Path, str | None]] = []  # (target, backup of its previous content)
        try:
            for label, tmp in list(temps.items()):
                target = targets[label]
                backup = _backup(target)
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    if backup:
                        _unlink(backup)
                    raise SubpruneError(f"cannot write {label} {given[label]}: {exc.strerror or exc}") from None
                del temps[label]
                done.append((target, backup))
        except BaseException:
            for target, backup in reversed(done):
                if backup:
                    with contextlib.suppress(OSError):
                        os.replace(backup, target)
                else:
                    _unlink(target)
            raise
        for _, backup in done:
            if backup:
                _unlink(backup)


def _backup(target: Path) -> str | None:
    """A hard link to ``target``'s current content (None when it does not exist or the file
    system has no hard links)."""
    if not target.exists():
        return None
    for _ in range(100):
        name = target.parent / f".{target.name}.{os.urandom(4).hex()}.old"
        try:
            os.link(target, name)
        except FileExistsError:
            continue
        except OSError:
            return None
        return str(name)
    return None


def _unlink(path: PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """While writing: SIGTERM and SIGHUP raise (so the temporary files are removed), then are
    delivered again to the previous handler (by default, ending the process with that signal).
    Only in the main thread, and not for a signal that is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, frame):
        raise _Signalled(signum)

    for signum in _SIGNALS:
        old = signal.getsignal(signum)
        if old is not signal.SIG_IGN and old is not None:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    except _Signalled as caught:
        _restore(previous)
        previous = {}
        signal.raise_signal(caught.signum)
        raise SubpruneError(f"interrupted by signal {caught.signum}; nothing was written") from None
    finally:
        _restore(previous)


def _restore(previous: dict) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT, SIGTERM and SIGHUP held back (delivered on exit) where the platform allows."""
    mask = {signal.SIGINT, *_SIGNALS}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
