"""Atomic file output: write beside the target, fsync, rename, so no reader ever sees a partial file.

Torch-free; used for images, weights, checkpoints and bundles alike.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_write", "write_synced", "default_mode", "staged_dir", "replace_dir", "output_lock", "OutputBusyError",
           "clean_leftovers", "clean_partials", "check_replaceable", "check_output_dir", "unknown_entries"]


class OutputBusyError(OSError):
    """Another process is writing the same output (it holds the output's lock)."""


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open``/``mkdir`` would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse an existing ``path`` that is not a regular file: a rename would replace a device, a link or a FIFO.

    (``/dev/null`` given as an output, as root, would otherwise become a regular file for everyone.)
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device, FIFO or socket")
        raise FileExistsError(f"cannot write {str(path)!r}: it exists and is {kind}, not a regular file; "
                              "choose another output")


def check_output_dir(out: str | os.PathLike, kind: str, why_not_ours: Callable[[Path], str | None]) -> bool:
    """The one rule of every command that writes a directory: ``out`` is absent, empty, or its own kind of output.

    Returns True when ``out`` holds an earlier output of this ``kind`` (what the command may then resume or, when
    asked to, replace); ``why_not_ours(out)`` says why a non-empty directory is not one (None: it is). Anything else
    is refused by name with ``FileExistsError`` saying how to proceed, before anything is written or deleted.
    """
    out = Path(out)
    if out.is_symlink():
        raise FileExistsError(f"{str(out)!r} is a symbolic link: pass the directory it points to ({str(out.resolve())!r})")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is not a directory: choose another output directory")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    why = why_not_ours(out)
    if why is not None:
        raise FileExistsError(f"{str(out)!r} is not {kind} ({why}): diffzoo writes into or replaces only its own "
                              "outputs, and nothing there was touched; choose another (absent or empty) directory")
    return True


def unknown_entries(directory: Path, known: set[str]) -> str | None:
    """Why ``directory`` holds more than an output of the given layout would (its first unknown entries), or None.

    What an interrupted write left (``clean_partials``'s hidden ``.partial-``, ``.old-`` and ``.tmp`` entries)
    counts as the output's own.
    """
    extra = sorted(p.name for p in directory.iterdir() if p.name not in known and not _is_partial(p.name))
    return f"it holds {extra[:5]}, which such a directory does not" if extra else None


def _is_partial(name: str) -> bool:
    """What an interrupted write leaves: a staged directory (``.NAME.partial-*``, ``.NAME.old-*``) or a temp file."""
    return name.startswith(".") and (".partial-" in name or ".old-" in name or name.endswith(".tmp"))


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write to a temp file beside ``path``, fsync, then rename: no partial file, ever.

    ``data`` is the bytes, or a function that writes them to the open file (``torch.save``). An
    existing ``path`` that is not a regular file is refused (``check_replaceable``), never replaced.
    """
    path = Path(path)
    check_replaceable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            _write(f, data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_synced(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write a new file inside a staged directory (``staged_dir``) and fsync it; the directory's rename publishes it."""
    with open(path, "wb") as f:
        _write(f, data)
    return Path(path)


def _write(f: BinaryIO, data: bytes | Callable[[BinaryIO], object]) -> None:
    if callable(data):
        data(f)
    else:
        f.write(data)
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary sibling of ``out``, then put it in place of ``out`` (``replace_dir``).

    Yields the temporary directory; if the block raises (or is interrupted) it is removed and
    ``out`` is untouched. The caller holds ``output_lock(out)`` where two writers could meet.
    """
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.absolute().parent))
    try:
        tmp.chmod(default_mode(directory=True))  # mkdtemp creates 0700
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2  # <linux/fs.h>
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if platform.system() != "Linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Put the finished directory ``tmp`` in place of ``out``; at no moment is ``out`` missing or partial.

    On Linux the two directories are exchanged in one atomic step (``renameat2``), after which
    ``tmp`` holds the old directory and is removed. Elsewhere the old directory is renamed aside
    first (a window in which ``out`` is absent; ``clean_leftovers`` removes what a crash there leaves).
    """
    tmp, out = Path(tmp), Path(out)
    if out.exists() and any(out.iterdir()):
        if _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # the old directory, now under the temporary name
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def clean_leftovers(out: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted write of ``out`` left beside it (``.NAME.partial-*``, ``.NAME.old-*``).

    Call it only while holding ``output_lock(out)``: then no other writer of ``out`` is running.
    """
    out = Path(out)
    gone = [p for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*") for p in out.parent.glob(pattern) if p.is_dir()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _lock_dir() -> Path:
    """This user's lock directory under the temp dir: created 0700, refused unless it is ours, private, not a link."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = Path(tempfile.gettempdir()) / f"diffzoo-locks-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        what = ("not a directory" if not stat.S_ISDIR(st.st_mode) else f"owned by uid {st.st_uid}" if st.st_uid != uid
                else f"mode {stat.S_IMODE(st.st_mode):o}, open to other users")
        raise PermissionError(f"the lock directory {str(path)!r} is {what}: refusing to use it (remove it, or set TMPDIR)")
    return path


def clean_partials(*directories: str | os.PathLike) -> list[Path]:
    """Remove every interrupted write inside ``directories``: staged ``.*.partial-*`` / ``.*.old-*`` directories
    and ``atomic_write``'s ``.*.tmp`` files. Only while holding the output lock of what contains them."""
    gone = []
    for d in map(Path, directories):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not _is_partial(p.name) or p.is_symlink():
                continue
            if p.name.endswith(".tmp") and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
            elif not p.name.endswith(".tmp") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p)
    return gone


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on writing ``out``; refuse a second writer at once with ``OutputBusyError``.

    The lock is ``fcntl.flock`` on a file named by the output's resolved path (``..`` and links
    collapsed: two spellings of one output share one lock) in this user's private directory under
    the system temp dir (``_lock_dir``), opened without following links, so nothing is left beside
    the user's output. Lock files stay there (removing one would let two writers lock two
    different files); they are empty.
    """
    import hashlib

    out = Path(out)
    key = hashlib.sha256(os.fsencode(out.resolve())).hexdigest()[:32]
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield Path(os.devnull)
        return
    path = _lock_dir() / f"{key}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PermissionError(f"cannot open the lock file {str(path)!r} ({e.strerror}; a link there is refused)") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(f"the lock file {str(path)!r} is not a regular file: refusing to use it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusyError(
                f"{str(out)!r} is being written by another diffzoo process: wait for it to finish, or choose another output"
            ) from None
        yield path
    finally:
        os.close(fd)
