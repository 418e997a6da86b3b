"""The training service process stays torch-free, and never runs without its spec check.

import-linter pins the imports (``pyproject.toml``: the service's packages never import torch,
transformers, peft or the runner's code); these tests pin what the process really loads, in a
fresh interpreter: the service's modules, a spec checked recipe by recipe (which asks a child
process what the machine's devices can do) and the runner command built for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch", "transformers", "peft")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_service_process_never_loads_torch(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (base / "model.safetensors").write_bytes(b"")
    code = f"""
        import sys
        from llamafleet.training.v1 import training_pb2 as pb

        from services.training.jobs import launch
        from services.training.server import make_register  # noqa: F401 (the service)
        from services.training.spec.normalize import normalize, validate as validate_request
        from services.training.spec.validation import validate

        spec = normalize(pb.TrainingJobSpec(
            job_id="j", stage=pb.STAGE_SFT, base_model={str(base)!r},
            dataset=pb.DatasetRef(dataset_id="d"),
        ))
        spec.distributed.world_size = 2
        validate_request(spec)
        validate(spec)  # the devices are asked of torch in a child process
        launch.runner_command(spec, {str(tmp_path / "job")!r}, "127.0.0.1:1")
        print([name for name in {HEAVY!r} if name in sys.modules])
    """
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_a_broken_spec_check_stops_the_service_rather_than_being_skipped(tmp_path):
    """The job manager imports the spec check plainly: an import error inside it is an error
    of the service, never a job accepted without the check."""
    code = """
        import importlib.abc
        import sys

        class Broken(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "services.training.spec.validation":
                    raise ImportError("broken on purpose", name="some_dependency")
                return None

        sys.meta_path.insert(0, Broken())
        try:
            import services.training.server  # noqa: F401
        except ImportError as exc:
            print("refused:", exc)
        else:
            print("imported")
    """
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused: broken on purpose", done.stdout
