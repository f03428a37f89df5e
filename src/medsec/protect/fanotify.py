"""Thin ctypes bindings to Linux fanotify (fanotify(7)), with no C build.

This is the low-level layer every protection part shares: the allowlisting engine
(permission events, ``FAN_CLASS_CONTENT``) and integrity monitoring (notification
events such as ``FAN_CLOSE_WRITE`` / ``FAN_MODIFY``, ``FAN_CLASS_NOTIF``). The API is
kept small and stable::

    fan = Fanotify(FAN_CLASS_CONTENT)            # or FAN_CLASS_NOTIF for notifications
    try:
        fan.mark("/srv/device", FAN_OPEN_EXEC_PERM)          # FAN_MARK_MOUNT
        for event in fan.read_events(timeout=0.5):           # FanotifyEvent(mask, fd, pid)
            try:
                if event.is_permission:
                    fan.respond(event.fd, allow=True)        # every permission event MUST be answered
            finally:
                event.close()                                # every event fd MUST be closed
    finally:
        fan.close()

Every failing call raises :class:`~medsec.protect.errors.FanotifyError` naming the call
and the errno. A permission event that is never answered blocks the process that
caused it until the group is closed (the kernel then allows it), so callers answer
every permission event and close the group on every exit path.

Safety: a mark with a permission bit on a mount the machine itself runs from can stop
every exec on the machine if the listener stalls. Mark only a dedicated mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medsec.protect.errors import FanotifyError

# fanotify_init() flags (include/uapi/linux/fanotify.h)
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_ENABLE_AUDIT = 0x00000040

# Event mask bits
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_ATTRIB = 0x00000004
FAN_CLOSE_WRITE = 0x00000008
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN = 0x00000020
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_DELETE_SELF = 0x00000400
FAN_MOVE_SELF = 0x00000800
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_ONDIR = 0x40000000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_CLOSE = FAN_CLOSE_WRITE | FAN_CLOSE_NOWRITE
PERMISSION_EVENTS = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

# fanotify_mark() flags
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_IGNORED_MASK = 0x00000020
FAN_MARK_IGNORED_SURV_MODIFY = 0x00000040
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_FILESYSTEM = 0x00000100

# Responses to permission events
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3

# struct fanotify_event_metadata { u32 event_len; u8 vers; u8 reserved; u16 metadata_len;
#                                  aligned_u64 mask; s32 fd; s32 pid; }
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_response { s32 fd; u32 response; }
_RESPONSE = struct.Struct("=iI")
_READ_SIZE = 64 * _METADATA.size * 16
_AT_FDCWD = -100


@functools.cache
def _lib() -> ctypes.CDLL:
    """libc with the two fanotify calls typed; loaded on first use, never at import."""
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    lib.fanotify_init.restype = ctypes.c_int
    lib.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    lib.fanotify_mark.restype = ctypes.c_int
    return lib


def _fail(call: str, err: int, what: str = "") -> FanotifyError:
    name = errno.errorcode.get(err, str(err))
    suffix = f" ({what})" if what else ""
    return FanotifyError(f"{call} failed: {name}: {os.strerror(err)}{suffix}")


@dataclass(frozen=True)
class FanotifyEvent:
    """One event as the kernel reports it.

    ``fd`` is an open read-only descriptor of the file (``FAN_NOFD`` for queue overflow);
    reading through it raises no further fanotify events. ``pid`` is the process id of
    the process that caused the event.
    """

    mask: int
    fd: int
    pid: int

    @property
    def is_permission(self) -> bool:
        """True when the kernel waits for :meth:`Fanotify.respond` on this event."""
        return bool(self.mask & PERMISSION_EVENTS)

    @property
    def is_overflow(self) -> bool:
        """True when the kernel dropped events because the queue was full."""
        return bool(self.mask & FAN_Q_OVERFLOW)

    def path(self) -> str | None:
        """The file's path as seen through the event fd (``/proc/self/fd``), or None."""
        if self.fd < 0:
            return None
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return None

    def close(self) -> None:
        """Close the event's fd; call exactly once per event (after responding)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)


class Fanotify:
    """One fanotify group (one fd).

    ``flags`` is the class and options for ``fanotify_init`` (``FAN_CLASS_CONTENT`` for
    permission events, ``FAN_CLASS_NOTIF`` for notifications); ``FAN_CLOEXEC`` and
    ``FAN_NONBLOCK`` are always added. ``event_f_flags`` are the open flags of the event
    fds (read-only, large-file, close-on-exec by default).
    """

    def __init__(
        self,
        flags: int = FAN_CLASS_CONTENT,
        event_f_flags: int = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC,
    ) -> None:
        fd = int(_lib().fanotify_init(flags | FAN_CLOEXEC | FAN_NONBLOCK, event_f_flags))
        if fd < 0:
            raise _fail("fanotify_init", ctypes.get_errno(), "needs CAP_SYS_ADMIN and CONFIG_FANOTIFY")
        self._fd: int = fd

    @property
    def fileno(self) -> int:
        if self._fd < 0:
            raise FanotifyError("fanotify group is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def mark(self, path: str | Path, mask: int, *, mount: bool = True, remove: bool = False) -> None:
        """Add (or remove) ``mask`` on the mount holding ``path`` (``FAN_MARK_MOUNT``).

        With ``mount=False`` the mark covers the whole filesystem (``FAN_MARK_FILESYSTEM``):
        every mount of the same superblock, including bind mounts.
        """
        flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | (FAN_MARK_MOUNT if mount else FAN_MARK_FILESYSTEM)
        self._mark(flags, mask, path)

    def mark_inode(self, path: str | Path, mask: int, *, remove: bool = False) -> None:
        """Add (or remove) ``mask`` on one file or directory (``FAN_MARK_INODE``).

        With ``FAN_EVENT_ON_CHILD`` in ``mask`` a directory mark reports events of its
        direct children, which is what notification watchers of a few folders want.
        """
        self._mark(FAN_MARK_REMOVE if remove else FAN_MARK_ADD, mask, path)

    def ignore(self, fd: int, mask: int, *, remove: bool = False) -> None:
        """Add (or remove) ``mask`` to the ignore mask of the file open as ``fd`` (an inode mark).

        The kernel then stops reporting those events for that file, also through mount marks,
        until the file is modified: a write clears the ignore mask (no
        ``FAN_MARK_IGNORED_SURV_MODIFY``). An allowlist uses this for files it already trusts.
        """
        flags = (FAN_MARK_REMOVE if remove else FAN_MARK_ADD) | FAN_MARK_IGNORED_MASK
        if _lib().fanotify_mark(self.fileno, flags, mask, fd, None) < 0:
            raise _fail("fanotify_mark", ctypes.get_errno(), f"ignore mask on fd {fd}, mask {mask:#x}")

    def flush_inode_marks(self) -> None:
        """Remove every inode mark of this group (and with them every ignore mask)."""
        if _lib().fanotify_mark(self.fileno, FAN_MARK_FLUSH, 0, _AT_FDCWD, None) < 0:
            raise _fail("fanotify_mark", ctypes.get_errno(), "FAN_MARK_FLUSH of inode marks")

    def _mark(self, flags: int, mask: int, path: str | Path) -> None:
        encoded = os.fsencode(str(path))
        if _lib().fanotify_mark(self.fileno, flags, mask, _AT_FDCWD, encoded) < 0:
            raise _fail("fanotify_mark", ctypes.get_errno(), f"path {str(path)!r}, mask {mask:#x}")

    def read_events(self, timeout: float | None = None) -> Iterator[FanotifyEvent]:
        """Wait up to ``timeout`` seconds (None: forever) and yield the events that are ready.

        Yields nothing on timeout. The caller owns each yielded event: it answers
        permission events with :meth:`respond` and closes every event's fd.
        """
        if not self._wait(timeout):
            return
        try:
            data = os.read(self.fileno, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            raise _fail("read(fanotify)", e.errno or 0) from e
        yield from self._parse(data)

    def _wait(self, timeout: float | None) -> bool:
        poller = select.poll()
        poller.register(self.fileno, select.POLLIN)
        try:
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        except InterruptedError:
            return False
        return bool(ready)

    @staticmethod
    def _parse(data: bytes) -> Iterator[FanotifyEvent]:
        events: list[FanotifyEvent] = []
        offset = 0
        while offset + _METADATA.size <= len(data):
            event_len, vers, _reserved, _meta_len, mask, fd, pid = _METADATA.unpack_from(data, offset)
            if vers != FANOTIFY_METADATA_VERSION or event_len < _METADATA.size:
                for event in events:  # answering is impossible without parsing; release what we hold
                    event.close()
                if fd >= 0:
                    os.close(fd)
                raise FanotifyError(
                    f"fanotify metadata version {vers} (length {event_len}) is not the supported version "
                    f"{FANOTIFY_METADATA_VERSION}"
                )
            events.append(FanotifyEvent(mask, fd, pid))
            offset += event_len
        yield from events

    def respond(self, fd: int, allow: bool) -> None:
        """Answer the permission event whose fd is ``fd``: allow or deny (the caller gets EPERM)."""
        response = _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY)
        try:
            os.write(self.fileno, response)
        except OSError as e:
            raise _fail("write(fanotify_response)", e.errno or 0, f"event fd {fd}") from e

    def close(self) -> None:
        """Close the group. The kernel allows any permission event still unanswered."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Fanotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
