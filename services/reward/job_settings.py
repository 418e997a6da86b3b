"""Per-job reward settings: normalisation (whiten, scale, clip) and rule-scorer options.

A request may carry the job's settings itself (``RewardSettings`` in ``ScoreRolloutsRequest`` and
``RolloutTask``, which a PPO job fills from its ``PpoConfig``): then every reward worker applies
the same settings without a shared file (``from_proto``). Otherwise they come from the service:
its config gives every job's defaults, and ``job_settings_file`` (YAML) overrides them per job::

    ppo-gsm8k:            # job id
      whiten: true
      scale: 0.5
      clip: 5.0
      regex_pattern: '^\\s*The answer is \\d+'
      ignore_case: false

Settings are data: a pattern is a string compiled with limits (``scorers/rules.py``), never code.
Bad settings (unknown key, wrong type, pattern that does not compile) fail start-up with a
message that names the file, the job and the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.common.config import ConfigError, nearest
from services.common.errors import FieldViolation, InvalidArgument
from services.reward.config import RewardConfig
from services.reward.scorers.rules import PatternLimits, check_pattern, compile_pattern


@dataclass(frozen=True)
class JobSettings:
    """What one job's scores go through. ``clip`` 0 = no clipping."""

    whiten: bool = False
    scale: float = 1.0
    clip: float = 0.0
    regex_pattern: str = ""
    ignore_case: bool = False


_TYPES: dict[str, type] = {f.name: f.type for f in dataclasses.fields(JobSettings)}
_TYPE_BY_NAME = {"bool": bool, "float": float, "str": str}


def defaults_from(config: RewardConfig) -> JobSettings:
    return JobSettings(
        whiten=config.whiten,
        scale=config.scale,
        clip=config.clip,
        regex_pattern=config.regex_pattern,
        ignore_case=config.ignore_case,
    )


class JobSettingsTable:
    """Defaults plus per-job overrides; ``for_job("")`` and unknown jobs get the defaults."""

    def __init__(self, defaults: JobSettings, per_job: dict[str, JobSettings] | None = None):
        self.defaults = defaults
        self._per_job = dict(per_job or {})

    def for_job(self, job_id: str) -> JobSettings:
        return self._per_job.get(job_id, self.defaults)

    @classmethod
    def from_config(cls, config: RewardConfig) -> JobSettingsTable:
        defaults = defaults_from(config)
        limits = PatternLimits(config.max_pattern_chars, config.regex_timeout_ms)
        check_pattern(defaults.regex_pattern, "regex_pattern", limits)
        per_job: dict[str, JobSettings] = {}
        if config.job_settings_file:
            per_job = load_file(Path(config.job_settings_file), defaults, limits)
        return cls(defaults, per_job)


def from_proto(message, field: str, limits: PatternLimits) -> JobSettings:
    """A request's ``common.v1.RewardSettings`` (which then overrides the service's settings for
    the job); INVALID_ARGUMENT naming ``field`` when a value is bad."""
    settings = JobSettings(
        whiten=message.whiten,
        scale=message.scale if message.HasField("scale") else 1.0,
        clip=message.clip,
        regex_pattern=message.regex_pattern,
        ignore_case=message.ignore_case,
    )
    if not (settings.clip >= 0 and abs(settings.scale) < float("inf")):
        raise InvalidArgument(
            f"{field}: clip must be >= 0 and scale finite",
            reason="BAD_REWARD_SETTINGS",
            violations=[FieldViolation(f"{field}.clip", "must be >= 0 (0 = no clipping)")],
        )
    if settings.regex_pattern:
        compile_pattern(settings.regex_pattern, f"{field}.regex_pattern", limits)
    return settings


def load_file(path: Path, defaults: JobSettings, limits: PatternLimits) -> dict[str, JobSettings]:
    """Parse the per-job YAML file; every error names the file, the job and the key."""
    if not path.is_file():
        raise ConfigError(f"job_settings_file: {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job_settings_file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"job_settings_file {path}: expected a mapping of job id -> settings")
    out: dict[str, JobSettings] = {}
    for job_id, overrides in data.items():
        where = f"{path}: {job_id}"
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: expected a mapping of setting -> value")
        values: dict[str, Any] = {}
        for key, raw in overrides.items():
            values[str(key)] = _coerce(str(key), raw, where)
        settings = dataclasses.replace(defaults, **values)
        if settings.clip < 0:
            raise ConfigError(f"{where}.clip: must be >= 0 (0 = no clipping)")
        check_pattern(settings.regex_pattern, f"{where}.regex_pattern", limits)
        out[str(job_id)] = settings
    return out


def _coerce(key: str, raw: Any, where: str) -> Any:
    if key not in _TYPES:
        close = nearest(key, list(_TYPES))
        hint = f"; did you mean {close!r}?" if close else f"; valid keys: {', '.join(_TYPES)}"
        raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
    kind = _TYPE_BY_NAME[str(_TYPES[key])]
    if kind is bool and isinstance(raw, bool):
        return raw
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind is str and isinstance(raw, str):
        return raw
    raise ConfigError(f"{where}.{key}: expected a {kind.__name__}, got {raw!r}")
