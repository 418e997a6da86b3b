"""Where a request may make a service read or write: the roots its owner configured.

DESIGN.md section 6 (trust model): a service reads and writes only under roots its owner
configured; a request names a path relative to one of them, or an absolute path inside one.
``Roots.resolve`` is the one place that turns a request's path into a file the service may open:

- the text is checked first: not empty, at most ``max_path_chars`` characters, no NUL byte
  (INVALID_ARGUMENT, never the OSError/ValueError that ``open`` would raise);
- a relative path is taken relative to each root in turn (never to the working directory), an
  absolute one as it is; then every symlink and ``..`` is resolved (``os.path.realpath``);
- the resolved path must lie under a root and under none of the denied paths (secrets the owner
  keeps beside the roots, such as the local cluster's ``cluster.json``), and never under
  ``/proc``, ``/dev`` or ``/sys`` whatever the roots say; otherwise PERMISSION_DENIED, naming the
  field and the configured roots;
- what exists there must be a regular file or a folder (as asked): FIFOs, sockets and device
  files are never opened (PERMISSION_DENIED).

A folder a service reads as a whole (a dataset folder, a tokenizer or model folder) is listed
with ``files_in``/``check_folder``: each entry is resolved and checked the same way, so a
symlink inside an allowed folder cannot lead out of the roots. (A path swapped for a symlink
between the check and the open is not guarded against: that takes write access inside a root.)

Roots are configuration: ``Roots.parse`` reads a ``os.pathsep``-separated list (like ``PATH``).
An empty list refuses every request path, with a message saying which key to set.

It knows nothing about what the files hold.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from services.common.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    invalid,
    shorten,
)
from services.common.limits import DEFAULT_LIMITS, Limits, check_length

NEVER_OPENED = (Path("/proc"), Path("/dev"), Path("/sys"))
_KINDS = ("file", "dir", "any")


def parse_paths(text: str) -> list[str]:
    """The entries of a ``os.pathsep``-separated list of paths (empty ones dropped)."""
    return [p.strip() for p in text.split(os.pathsep) if p.strip()]


class Roots:
    """The folders one kind of request path may resolve into (``config_key`` names them)."""

    def __init__(
        self,
        config_key: str,
        roots: Iterable[str | os.PathLike],
        denied: Iterable[str | os.PathLike] = (),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.config_key = config_key
        self.paths = tuple(_real(Path(r).expanduser()) for r in roots)
        self.denied = tuple(_real(Path(d).expanduser()) for d in denied)
        self.limits = limits

    @classmethod
    def parse(
        cls, config_key: str, roots: str, denied: str = "", limits: Limits = DEFAULT_LIMITS
    ) -> Roots:
        return cls(config_key, parse_paths(roots), parse_paths(denied), limits)

    def describe(self) -> str:
        if not self.paths:
            return f"{self.config_key} is empty"
        return f"{self.config_key} = {os.pathsep.join(str(p) for p in self.paths)}"

    # -- resolving ---------------------------------------------------------------------------

    def resolve(self, raw: str, field_path: str, kind: str = "any") -> Path:
        """The real path of an existing file (``kind`` "file"), folder ("dir") or either ("any")
        that ``raw`` names under these roots; refused otherwise (see the module docstring)."""
        assert kind in _KINDS, kind
        self._check_text(raw, field_path)
        reals = [_real(c) for c in self._candidates(raw, field_path)]
        found = next((real for real in reals if _exists(real)), None)
        self._check_inside(found or reals[0], raw, field_path)
        if found is None:
            where = (
                "" if Path(raw).is_absolute() else f" under {self.describe().split(' = ', 1)[-1]}"
            )
            raise invalid(field_path, f"{shorten(raw)} does not exist{where}", "FILE_NOT_FOUND")
        self._check_kind(found, raw, field_path, kind)
        return found

    def resolve_for_write(self, raw: str, field_path: str) -> Path:
        """Where to write what ``raw`` names: a relative path goes under the first root, an
        absolute one must lie under a root; what exists there must be a folder."""
        self._check_text(raw, field_path)
        (candidate,) = self._candidates(raw, field_path)[:1]
        real = _real(candidate)
        self._check_inside(real, raw, field_path)
        if _exists(real):
            self._check_kind(real, raw, field_path, "dir")
        return real

    def files_in(self, folder: Path, field_path: str, suffixes: Iterable[str] = ()) -> list[Path]:
        """The regular files of ``folder`` (sorted by name, hidden ones left out, only
        ``suffixes`` when given), each resolved and checked against the roots."""
        wanted = {s.lower() for s in suffixes}
        found = []
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or (wanted and child.suffix.lower() not in wanted):
                continue
            real = _real(child)
            self._check_inside(real, str(child), field_path)
            if stat.S_ISREG(_mode(real)):
                found.append(real)
        return found

    def check_folder(self, folder: Path, field_path: str) -> None:
        """Every entry of ``folder`` (one level: a model or tokenizer folder) stays in the roots
        and is a regular file or a folder: a loader that opens them by name reads nothing else."""
        for child in sorted(folder.iterdir()):
            real = _real(child)
            self._check_inside(real, str(child), field_path)
            if _exists(real):
                self._check_kind(real, str(child), field_path, "any")

    # -- checks ------------------------------------------------------------------------------

    def _check_text(self, raw: str, field_path: str) -> None:
        if not raw:
            raise invalid(field_path, "empty; name a path under the configured roots", "NO_PATH")
        check_length(raw, field_path, self.limits.path_chars, "max_path_chars")
        if "\x00" in raw:
            raise invalid(field_path, f"{shorten(raw)} contains a NUL byte", "BAD_PATH")

    def _candidates(self, raw: str, field_path: str) -> list[Path]:
        path = Path(raw).expanduser() if raw.startswith("~") else Path(raw)
        if path.is_absolute():
            return [path]
        if not self.paths:
            raise self._denied(raw, field_path)
        return [root / path for root in self.paths]

    def _check_inside(self, real: Path, raw: str, field_path: str) -> None:
        for never in NEVER_OPENED:
            if real == never or real.is_relative_to(never):
                raise PermissionDenied(
                    f"{field_path}: {shorten(raw)} resolves into {never}, which is never opened",
                    reason="PATH_NOT_ALLOWED",
                    violations=[_violation(field_path, f"resolves into {never}")],
                )
        inside = any(real == r or real.is_relative_to(r) for r in self.paths)
        if not inside or any(real == d or real.is_relative_to(d) for d in self.denied):
            raise self._denied(raw, field_path)

    def _denied(self, raw: str, field_path: str) -> PermissionDenied:
        if not self.paths:
            hint = (
                f"no {self.config_key} are configured: the service's owner sets {self.config_key}"
            )
        else:
            hint = f"it must lie under {self.describe()} (symlinks and '..' resolved)"
        return PermissionDenied(
            f"{field_path}: {shorten(raw)} is outside the folders this service may use; {hint}",
            reason="PATH_NOT_ALLOWED",
            violations=[_violation(field_path, f"outside {self.describe()}")],
            metadata={"roots": self.describe()[:200]},
        )

    def _check_kind(self, real: Path, raw: str, field_path: str, kind: str) -> None:
        mode = _mode(real)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            what = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a socket"
                if stat.S_ISSOCK(mode)
                else "a device file"
            )
            raise PermissionDenied(
                f"{field_path}: {shorten(raw)} is {what}; only regular files and folders are read",
                reason="NOT_A_REGULAR_FILE",
                violations=[_violation(field_path, f"is {what}")],
            )
        if kind == "dir" and not stat.S_ISDIR(mode):
            raise invalid(field_path, f"{shorten(raw)} is not a folder", "NOT_A_FOLDER")
        if kind == "file" and not stat.S_ISREG(mode):
            raise invalid(field_path, f"{shorten(raw)} is not a file", "NOT_A_FILE")


def _violation(field_path: str, description: str) -> FieldViolation:
    return FieldViolation(field_path, description)


def _real(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:  # a symlink loop under strict resolution, odd bytes
        raise InvalidArgument(
            f"{shorten(str(path))} cannot be resolved: {type(exc).__name__}",
            reason="BAD_PATH",
        ) from None


def _mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True
