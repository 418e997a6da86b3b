"""Service configuration: one frozen dataclass per service, filled from four layers.

Precedence, lowest first: the dataclass defaults < a YAML file (``--config FILE``) <
``LLAMAFLEET_<SERVICE>_<FIELD>`` environment variables < ``key=value`` arguments. A key that is
not a field, in any layer, is an error that names the nearest valid key; a value that does not
parse as the field's type is an error that names the layer it came from.

``ServerConfig`` holds the fields every service shares (address, auth, TLS, limits, logging);
each service's own dataclass extends it with its fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and where."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Fields shared by the four services (see each service's ``config.py`` for the rest)."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port; the bound address goes to ``address_file``
    address_file: str = ""  # written once serving, as "host:port" (read by `llamafleet up`)
    auth_token: str = ""  # bearer token; required when binding a non-loopback address
    read_token: str = ""  # a second token that may call only read-only RPCs (server.py)
    tls_cert: str = ""  # PEM server certificate; with tls_key turns TLS on
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA; when set, clients must present a certificate (mTLS)
    max_concurrent_rpcs: int = 64  # past this, calls get RESOURCE_EXHAUSTED
    max_message_mb: int = 64
    shutdown_delay_s: float = 1.0  # NOT_SERVING is visible this long before the server stops
    grace_s: float = 10.0  # in-flight calls get this long to finish on stop
    log_level: str = "INFO"
    log_file: str = ""
    # -- request bounds (services/common/limits.py), checked before any work
    max_id_chars: int = 128  # job, dataset and adapter ids
    max_name_chars: int = 256  # scorer, template and module names
    max_path_chars: int = 1024  # file and folder paths in requests
    max_list_items: int = 256  # items of a repeated field (paths, modules, job states)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: {self.port} is not a TCP port (0-65535)")
        if self.max_concurrent_rpcs < 1:
            raise ConfigError("max_concurrent_rpcs: must be at least 1")
        for key in ("max_id_chars", "max_name_chars", "max_path_chars", "max_list_items"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1")
        if self.read_token and not self.auth_token:
            raise ConfigError("read_token: set auth_token too (without it every call is allowed)")
        if self.read_token and self.read_token == self.auth_token:
            raise ConfigError("read_token: must differ from auth_token")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key: set both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
        if not self.auth_token and not is_loopback(self.host):
            raise ConfigError(
                f"host: refusing to bind {self.host!r} (not loopback) without auth_token; "
                "set auth_token (and preferably tls_cert/tls_key), or bind 127.0.0.1"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_config(
    cls: type[T],
    service: str,
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from defaults, ``--config FILE``, the environment and ``key=value`` args."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}

    config_file, assignments = _split_argv(argv)
    if config_file:
        for key, raw in _read_yaml(config_file).items():
            _check_key(str(key), names, config_file)
            values[key] = _coerce(raw, hints[key], f"{config_file}: {key}")

    prefix = f"LLAMAFLEET_{service.upper()}_"
    for var, raw in environ.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix) :].lower()
        _check_key(key, names, f"environment variable {var}")
        values[key] = _coerce(raw, hints[key], f"environment variable {var}")

    for item in assignments:
        key, _, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        _check_key(key, names, f"argument {item!r}")
        values[key] = _coerce(raw, hints[key], f"argument {item!r}")

    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - keys are checked above
        raise ConfigError(str(exc)) from None


def _split_argv(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config_file = None
    assignments: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--config":
            if i + 1 >= len(items):
                raise ConfigError("--config needs a file path")
            config_file = items[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_file = arg.split("=", 1)[1]
        elif "=" in arg:
            assignments.append(arg.removeprefix("--"))
        else:
            raise ConfigError(f"argument {arg!r}: expected key=value or --config FILE")
        i += 1
    return config_file, assignments


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # one line: run_service prints exactly one
        raise ConfigError(f"config file {path} is not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of key: value at the top")
    return data


def _check_key(key: str, names: list[str], where: str) -> str:
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
    raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def nearest(key: str, names: Sequence[str]) -> str | None:
    """The closest valid name to ``key``, for "did you mean" messages elsewhere."""
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.5)
    return close[0] if close else None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(raw: Any, hint: Any, where: str) -> Any:
    """Turn a YAML value or an env/argument string into the field's type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null", ""}):
            return None
        hint = args[0]
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"{raw!r} is not a boolean (true/false)")
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(f"{raw!r} is not an integer")
            try:
                return int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{raw!r} is not an integer") from None
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError(f"{raw!r} is not a number")
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{raw!r} is not a number") from None
        if hint is str:
            if isinstance(raw, (dict, list)):
                raise ValueError(f"{raw!r} is not a string")
            return "" if raw is None else str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: unsupported field type {hint!r}")  # pragma: no cover
