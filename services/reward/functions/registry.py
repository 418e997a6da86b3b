"""What reward functions a service offers, from built-ins and the owner's ``functions_file``.

Built in: the rules ``exact_match``, ``contains_answer``, ``regex``, ``format_json`` (in
process), ``math_verify`` (subprocess pool) and ``code_tests`` (sandbox). The owner adds more in
the reward service's ``functions_file`` (YAML)::

    python_path: [/opt/rewards]          # prepended to the pool workers' sys.path
    entry_point_group: llamafleet.reward_functions   # every entry point of the group is offered
    pool: {workers: 2, timeout_s: 10, memory_mb: 2048}
    sandbox: {cpu_s: 5, wall_s: 10, memory_mb: 512, processes: 32, file_mb: 16, open_files: 64,
              tmpfs_mb: 64, max_tests: 64, python: /usr/bin/python3, uid_base: 200000,
              uid_count: 64}
    functions:
      length_penalty: {call: "my_rewards:length_penalty", timeout_s: 2, description: "..."}
    remote:
      judge: {url: "https://judge.internal/score", token_env: JUDGE_TOKEN, timeout_s: 10,
              retries: 2, backoff_s: 0.5}

Entry points and ``call`` targets are read as strings here and imported only inside the pool's
worker processes (which fail start-up with the function's name if an import fails), never in the
serving process. Every error names the file and the key. ``pool.workers`` defaults to the
service's ``function_workers``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from services.common.config import ConfigError, nearest
from services.reward.functions.remote import RemoteScorer
from services.reward.functions.sandbox import SandboxLimits

NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
DEFAULT_GROUP = "llamafleet.reward_functions"
MATH_VERIFY_TARGET = "services.reward.functions.math_verify:score"
POOL_PRELOAD = ("services.reward.functions.invoke", "math_verify", "sympy")


class Kind(StrEnum):
    RULE = "rule"
    BUILTIN = "builtin"
    USER = "user"
    SANDBOX = "sandbox"
    REMOTE = "remote"


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    kind: Kind
    description: str
    source: str
    timeout_s: float = 10.0
    target: str = ""  # module:attr run in the pool (BUILTIN, USER)
    args: tuple[str, ...] | None = None  # the arguments it accepts; None = checked when called
    remote: RemoteScorer | None = None


_RULES = {
    "exact_match": (
        "1 when the completion equals the reference (whitespace-folded)",
        ("ignore_case",),
    ),
    "contains_answer": ("1 when the reference occurs in the completion", ("ignore_case",)),
    "regex": ("1 when args.pattern matches the completion", ("pattern",)),
    "format_json": ("1 when the completion is a JSON object (optionally in a ```json fence)", ()),
}


def builtins(pool_timeout_s: float) -> dict[str, FunctionSpec]:
    out = {
        name: FunctionSpec(name, Kind.RULE, text, "builtin", 1.0, args=args)
        for name, (text, args) in _RULES.items()
    }
    out["math_verify"] = FunctionSpec(
        "math_verify", Kind.BUILTIN,
        "1 when the completion's final answer equals the reference symbolically (math-verify); "
        "args: extractor auto|boxed|last_number|regex, pattern, timeout_s, float_rounding",
        "builtin", pool_timeout_s, MATH_VERIFY_TARGET,
        ("extractor", "pattern", "timeout_s", "float_rounding"),
    )  # fmt: skip
    out["code_tests"] = FunctionSpec(
        "code_tests", Kind.SANDBOX,
        "fraction of the reference's tests (JSON) the completion's code block passes, run in a "
        "sandbox with no network; args: extract last_block|first_block|whole",
        "builtin", 0.0, args=("extract",),
    )  # fmt: skip
    return out


@dataclass(frozen=True)
class FunctionsConfig:
    functions: dict[str, FunctionSpec]
    python_path: tuple[str, ...] = ()
    pool_workers: int = 2
    pool_timeout_s: float = 10.0
    pool_memory_mb: int = 0
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)

    @property
    def pool_targets(self) -> list[str]:
        return sorted({s.target for s in self.functions.values() if s.kind is Kind.USER})


_TOP = ("python_path", "entry_point_group", "pool", "sandbox", "functions", "remote")
_POOL = ("workers", "timeout_s", "memory_mb")
_USER = ("call", "timeout_s", "description")
_REMOTE = tuple(f.name for f in dataclasses.fields(RemoteScorer) if f.name not in ("name", "stats"))
_SANDBOX = tuple(f.name for f in dataclasses.fields(SandboxLimits))


def _keys(where: str, data: Any, valid: tuple[str, ...]) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in data:
        if key not in valid:
            close = nearest(str(key), list(valid))
            hint = f"; did you mean {close!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    return data


def _number(where: str, value: Any, kind: type, minimum: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value!r}")
    return kind(value)


def _name(where: str, name: Any, taken: dict) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} must match {NAME.pattern}")
    if name in taken:
        raise ConfigError(f"{where}: {name!r} is already offered ({taken[name].source})")
    return name


def load(path: str, default_workers: int) -> FunctionsConfig:
    """The built-ins plus ``path``'s functions ("" = built-ins only); ``ConfigError`` if bad."""
    data: dict = {}
    where = f"functions_file {path}"
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{where}: no such file")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    data = _keys(where, data, _TOP)
    pool = _keys(f"{where}: pool", data.get("pool"), _POOL)
    workers_at = f"{where}: pool.workers" if "workers" in pool else "function_workers"
    workers = _number(workers_at, pool.get("workers", default_workers), int, 0)
    timeout = _number(f"{where}: pool.timeout_s", pool.get("timeout_s", 10.0), float, 0.01)
    memory = _number(f"{where}: pool.memory_mb", pool.get("memory_mb", 0), int, 0)
    sandbox_keys = _keys(f"{where}: sandbox", data.get("sandbox"), _SANDBOX)
    try:
        sandbox = SandboxLimits(**sandbox_keys)
    except TypeError as exc:
        raise ConfigError(f"{where}: sandbox: {exc}") from None
    for key, value in sandbox_keys.items():
        if key not in ("python", "lock_dir"):
            _number(f"{where}: sandbox.{key}", value, float, 1)
    python_path = data.get("python_path") or []
    if isinstance(python_path, str):
        python_path = [python_path]
    if not all(isinstance(p, str) for p in python_path):
        raise ConfigError(f"{where}: python_path: expected a list of folders")
    for folder in python_path:
        if not Path(folder).is_dir():
            raise ConfigError(f"{where}: python_path: {folder} is not a folder")

    functions = builtins(timeout)
    group = data.get("entry_point_group", DEFAULT_GROUP)
    if group:
        for ep in metadata.entry_points(group=str(group)):
            name = _name(f"{where}: entry point {ep.name} of {group}", ep.name, functions)
            functions[name] = FunctionSpec(
                name,
                Kind.USER,
                f"entry point of {group}",
                f"entry point {group}",
                timeout,
                ep.value,
            )
    for section in ("functions", "remote"):
        if not isinstance(data.get(section) or {}, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of name -> settings")
    for name, entry in (data.get("functions") or {}).items():
        at = f"{where}: functions.{name}"
        name = _name(at, name, functions)
        entry = _keys(at, entry, _USER)
        call = entry.get("call")
        if not isinstance(call, str) or not re.fullmatch(r"[\w.]+:[\w.]+", call):
            raise ConfigError(f"{at}.call: expected 'module:function', got {call!r}")
        functions[name] = FunctionSpec(
            name, Kind.USER, str(entry.get("description", "")), call,
            _number(f"{at}.timeout_s", entry.get("timeout_s", timeout), float, 0.01), call,
        )  # fmt: skip
    for name, entry in (data.get("remote") or {}).items():
        at = f"{where}: remote.{name}"
        name = _name(at, name, functions)
        entry = _keys(at, entry, _REMOTE)
        try:
            scorer = RemoteScorer(name=name, **entry)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{at}: {exc}") from None
        functions[name] = FunctionSpec(
            name, Kind.REMOTE, scorer.description, scorer.host, scorer.deadline_s, remote=scorer
        )
    return FunctionsConfig(functions, tuple(python_path), workers, timeout, memory, sandbox)
