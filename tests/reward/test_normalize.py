"""Normalisation per job (running mean/std, whitening, scale, clip) and per-job settings.

Expected values are derived by hand in the docstrings or with ``statistics`` over all values
seen (population variance).
"""

from __future__ import annotations

import random
import statistics

import pytest

from services.common.config import ConfigError
from services.common.server import run_service
from services.reward.config import RewardConfig
from services.reward.job_settings import JobSettings, JobSettingsTable
from services.reward.normalize import Normalizer, RunningStats, normalize
from services.reward.server import build_app, make_register


def test_batched_welford_equals_the_statistics_of_everything_seen():
    rng = random.Random(0)
    values = [rng.gauss(3.0, 2.0) for _ in range(1000)]
    stats, start = RunningStats(), 0
    for size in [1, 7, 100, 1, 391, 500]:
        stats.update(values[start : start + size])
        start += size
        seen = values[:start]
        assert stats.count == len(seen)
        assert stats.mean == pytest.approx(statistics.fmean(seen), abs=1e-12)
        assert stats.std == pytest.approx(statistics.pstdev(seen), abs=1e-9)


def test_whiten_scale_clip_by_hand():
    """Batch [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.8165; whitened [-1.2247, 0, 1.2247];
    scale 2 -> [-2.449, 0, 2.449]; clip 2 -> [-2, 0, 2]."""
    settings = JobSettings(whiten=True, scale=2.0, clip=2.0)
    got = Normalizer().apply("job", settings, [1.0, 2.0, 3.0])
    assert got == pytest.approx([-2.0, 0.0, 2.0])
    settings = JobSettings(whiten=True)
    assert Normalizer().apply("job", settings, [1.0, 2.0, 3.0]) == pytest.approx(
        [-1.2247449, 0.0, 1.2247449]
    )


def test_statistics_are_per_job_and_include_earlier_batches():
    """Job a sees 0, 10 then 20: mean 10, std sqrt(200/3) = 8.165 -> 20 whitens to 1.2247.
    Job b's first value is its own mean -> 0."""
    norm = Normalizer()
    settings = JobSettings(whiten=True)
    norm.apply("a", settings, [0.0, 10.0])
    assert norm.apply("a", settings, [20.0]) == pytest.approx([1.2247449])
    assert norm.apply("b", settings, [20.0]) == [0.0]
    assert norm.stats("a").count == 3 and norm.stats("b").count == 1


def test_without_job_or_whitening_only_scale_and_clip_apply_and_no_stats_are_kept():
    norm = Normalizer()
    settings = JobSettings(whiten=True, scale=0.5, clip=1.0)
    assert norm.apply("", settings, [1.0, 4.0, -4.0]) == [0.5, 1.0, -1.0]
    assert norm.stats("") is None
    assert norm.apply("j", JobSettings(scale=3.0), [1.0]) == [3.0]
    assert norm.stats("j") is None
    assert normalize(5.0, JobSettings(clip=0.0), None) == 5.0  # 0 = no clipping


def test_job_settings_file_overrides_defaults_per_job(tmp_path):
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "ppo-a:\n  whiten: true\n  clip: 3\n  regex_pattern: '^\\d+$'\nppo-b:\n  scale: 0.5\n"
    )
    table = JobSettingsTable.from_config(RewardConfig(scale=2.0, job_settings_file=str(path)))
    assert table.for_job("ppo-a") == JobSettings(
        whiten=True, scale=2.0, clip=3.0, regex_pattern=r"^\d+$"
    )
    assert table.for_job("ppo-b") == JobSettings(scale=0.5)
    assert table.for_job("other") == table.for_job("") == JobSettings(scale=2.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("j:\n  whitten: true\n", "j: unknown setting 'whitten'; did you mean 'whiten'?"),
        ("j:\n  clip: lots\n", "j.clip: expected a float"),
        ("j:\n  clip: -1\n", "j.clip: must be >= 0"),
        ("j:\n  regex_pattern: '(a'\n", "j.regex_pattern: pattern '(a' does not compile"),
        ("- j\n", "expected a mapping of job id"),
    ],
)
def test_bad_job_settings_fail_start_up_with_the_place(tmp_path, text, message):
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        JobSettingsTable.from_config(RewardConfig(job_settings_file=str(path)))
    assert message in str(err.value)


def test_bad_service_pattern_fails_start_up():
    with pytest.raises(ConfigError, match="regex_pattern: pattern has 600 characters"):
        JobSettingsTable.from_config(RewardConfig(regex_pattern="a" * 600))


def test_a_bad_job_settings_file_fails_the_service_start_up(tmp_path, capsys):
    """The file is read when the service starts (``server.build_app``), not when its config is
    built: the entry point still refuses it, with exit code 2 and one line naming the place."""
    path = tmp_path / "jobs.yaml"
    path.write_text("j:\n  whitten: true\n")
    config = RewardConfig(job_settings_file=str(path))  # a config is only values
    with pytest.raises(ConfigError, match="did you mean 'whiten'"):
        build_app(config)
    capsys.readouterr()
    code = run_service("reward", RewardConfig, [f"job_settings_file={path}"], make_register)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "configuration error" in err and "j: unknown setting 'whitten'" in err
