"""LLaMA-Factory's own example configs, run through llamafleet's config loading as a user would.

Each training config of LLaMA-Factory's ``examples/`` (``lf_examples.EXAMPLES``: its keys and
values) is written back as a YAML file with local paths (the built tiny model for
``model_name_or_path``, a test folder for ``output_dir``, a ZeRO JSON for ``deepspeed``, a PEFT
folder for ``adapter_name_or_path``) and loaded with ``load_job_spec``; a config that parses is
then checked by the training service's own spec checks. The outcome of every example and the
status of every key they use must be what the README's "LLaMA-Factory keys" tables say
(``LF_TABLE_WRITE=1`` rewrites them), and a refusal must name a key the key table refuses. Two
go through ``llamafleet train`` against a training service (real spec checks, fake runner).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from lf_examples import EXAMPLES
from llamafleet.lf_config import ConfigFileError, load_job_spec
from llamafleet.lf_keys import FLAT_KEYS, KEY_NOTES, NO_EFFECT_KEYS, REFUSED_KEYS, key_status

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- lf-keys:start -->", "<!-- lf-keys:end -->"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from services.training.tiny.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("lfx") / "tiny", "tiny", seed=0)


def local_copy(name: str, data: dict, folder: Path, model: Path) -> Path:
    """The example with local paths, as a LLaMA-Factory user adapts one."""
    out = dict(data)
    stem = name.removeprefix("examples/").removesuffix(".yaml").replace("/", "__")
    out["model_name_or_path"] = str(model)
    out["output_dir"] = str(folder / "saves" / stem)
    if "deepspeed" in out:
        stage = re.search(r"z(\d)", Path(out["deepspeed"]).name)
        ds = folder / Path(out["deepspeed"]).name
        offload = {"device": "cpu"} if "offload" in ds.name else None
        zero = {"stage": int(stage.group(1)) if stage else 0}
        if offload:
            zero |= {"offload_optimizer": offload, "offload_param": offload}
        ds.write_text(json.dumps({"zero_optimization": zero}))
        out["deepspeed"] = str(ds)
    if "adapter_name_or_path" in out:
        adapter = folder / "saves" / "sft-adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        out["adapter_name_or_path"] = str(adapter)
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path


def outcome(name: str, data: dict, folder: Path, model: Path) -> str:
    """ "runs" | "refused: `key`" (the loader) | "service refuses: `field`" (its spec checks)."""
    from services.common.errors import FailedPrecondition, InvalidArgument, Unimplemented
    from services.training.spec.normalize import normalize
    from services.training.spec.normalize import validate as validate_request
    from services.training.spec.validation import validate

    path = local_copy(name, data, folder, model)
    try:
        spec, _ = load_job_spec(path)
    except ConfigFileError as exc:
        message = str(exc).removeprefix(f"{path}: ")
        key = re.match(r"(?:unsupported key ')?([A-Za-z0-9_]+)", message).group(1)
        return f"refused: `{key}`"
    spec = normalize(spec)
    try:
        validate_request(spec)
        validate(spec)
    except (InvalidArgument, Unimplemented, FailedPrecondition) as exc:
        fields = sorted({v.field for v in exc.violations}) or [type(exc).__name__]
        return f"service refuses: `{'`, `'.join(fields)}`"
    return "runs"


def keys_of_examples() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for name, data in EXAMPLES.items():
        for key in data:
            used.setdefault(key, []).append(name)
    return dict(sorted(used.items()))


def tables(outcomes: dict[str, str]) -> str:
    lines = ["| key | examples using it | in llamafleet |", "|---|---|---|"]
    for key, names in keys_of_examples().items():
        lines.append(f"| `{key}` | {len(names)} | {key_status(key)} |")
    lines += ["", "| LLaMA-Factory example (`examples/...`) | here |", "|---|---|"]
    for name, result in outcomes.items():
        lines.append(f"| `{name.removeprefix('examples/')}` | {result} |")
    return "\n".join(lines)


def test_every_example_runs_or_is_refused_as_the_readme_tables_say(tiny, tmp_path):
    outcomes = {name: outcome(name, data, tmp_path, tiny) for name, data in EXAMPLES.items()}
    for name, result in outcomes.items():  # a refusal names a key the key table refuses
        if result.startswith("refused: "):
            key = result.split("`")[1]
            assert key in EXAMPLES[name], (name, key)
            status = key_status(key)
            value_refused = key in FLAT_KEYS and "refused" in KEY_NOTES.get(key, "")
            assert status.startswith("refused") or value_refused, (name, key, status)
        if result == "runs":  # no key it uses is refused with the value it has
            for key, value in EXAMPLES[name].items():
                assert (
                    key in FLAT_KEYS
                    or key in NO_EFFECT_KEYS
                    or (key in REFUSED_KEYS and value in REFUSED_KEYS[key][1])
                ), (name, key, value)
    table = tables(outcomes)
    text = README.read_text()
    section = f"{START}\n{table}\n{END}"
    if os.environ.get("LF_TABLE_WRITE"):
        before, rest = text.split(START, 1)
        README.write_text(before + section + rest.split(END, 1)[1])
        text = README.read_text()
    assert section in text, "README's LLaMA-Factory tables are stale: rerun with LF_TABLE_WRITE=1"
    runs = sum(r == "runs" for r in outcomes.values())
    print(f"\n{len(outcomes)} LLaMA-Factory training configs: {runs} run, "
          f"{len(outcomes) - runs} refused")  # fmt: skip
    assert runs >= 14  # the count when the tables were written: a regression floor


def test_llamafleet_train_submits_an_example_and_refuses_another(tiny, tmp_path, capsys):
    """Through the CLI against a training service with its real spec checks (fake runner)."""
    from llamafleet import cli, cluster
    from training_harness import TrainingService, config, kill_runners

    from services.training.spec.validation import validate

    # the examples ask for trust_remote_code: this service's owner allows it
    service = TrainingService(config(tmp_path / "jobs", allow_remote_code=True), validator=validate)
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        state = cluster.ClusterState(run_dir=str(run_dir), redis_url="")
        state.services["training"] = cluster.ServiceProcess(
            "training", os.getpid(), service.host.address
        )
        state.save()
        folder = tmp_path / "lf"
        folder.mkdir()
        flagship = "examples/train_lora/qwen3_lora_sft.yaml"
        good = local_copy(flagship, EXAMPLES[flagship], folder, tiny)
        code = cli.main(["train", str(good), "--detach", "--run-dir", str(run_dir)])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert re.search(r"job \S+: (QUEUED|RUNNING)", out.out)
        assert EXAMPLES[flagship]["resume_from_checkpoint"] is None  # the key issue 17 names
        fp8 = "examples/extras/fp8/llama3_fp8_deepspeed_sft.yaml"
        bad = local_copy(fp8, EXAMPLES[fp8], folder, tiny)
        code = cli.main(["train", str(bad), "--detach", "--run-dir", str(run_dir)])
        err = capsys.readouterr().err
        assert code == 2 and "refused" in err and "fp8" in err
    finally:
        service.stop()
        kill_runners(tmp_path / "jobs")
