"""Roots (where a request path may point) and limits (how large a request may be), directly.

Every case is what an attacker with a valid token sends as a path or a spec; the expected code
is the one the caller must see (PERMISSION_DENIED outside the roots, INVALID_ARGUMENT for a
malformed value), and the message names the field and never quotes more than a short prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from llamafleet.training.v1 import training_pb2 as t

from services.common.errors import LlamafleetError
from services.common.limits import Limits, check_id, check_number, message_violations
from services.common.roots import Roots


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """Two roots, a secret inside one, and things an attacker would point at."""
    a, b, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    for folder in (a, b, outside, a / "sub"):
        folder.mkdir()
    (a / "data.jsonl").write_text("{}\n")
    (b / "only-in-b.jsonl").write_text("{}\n")
    (a / "secret.json").write_text("password")
    (outside / "private.txt").write_text("private")
    (a / "link-out.jsonl").symlink_to(outside / "private.txt")
    (a / "link-in.jsonl").symlink_to(a / "data.jsonl")
    (a / "sub" / "escape").symlink_to(outside)
    os.mkfifo(a / "fifo.jsonl")
    return {"a": a, "b": b, "outside": outside, "root": tmp_path}


def _roots(tree) -> Roots:
    return Roots("dataset_roots", [tree["a"], tree["b"]], [tree["a"] / "secret.json"])


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(LlamafleetError) as err:
        call()
    return err.value.code, str(err.value)


def test_paths_inside_the_roots_resolve_relative_to_each_root_in_turn(tree):
    roots = _roots(tree)
    a = tree["a"]
    assert roots.resolve(str(a / "data.jsonl"), "paths[0]") == a / "data.jsonl"
    assert roots.resolve("data.jsonl", "paths[0]") == a / "data.jsonl"
    assert roots.resolve("only-in-b.jsonl", "paths[0]") == tree["b"] / "only-in-b.jsonl"
    assert roots.resolve("link-in.jsonl", "paths[0]", "file") == a / "data.jsonl"
    assert roots.resolve("sub/../data.jsonl", "paths[0]") == a / "data.jsonl"


@pytest.mark.parametrize(
    "raw,code,needle",
    [
        ("/etc/passwd", grpc.StatusCode.PERMISSION_DENIED, "dataset_roots"),
        ("../outside/private.txt", grpc.StatusCode.PERMISSION_DENIED, "outside the folders"),
        ("../../../../../../../etc/passwd", grpc.StatusCode.PERMISSION_DENIED, "paths[0]"),
        ("link-out.jsonl", grpc.StatusCode.PERMISSION_DENIED, "symlinks"),
        ("sub/escape/private.txt", grpc.StatusCode.PERMISSION_DENIED, "dataset_roots"),
        ("secret.json", grpc.StatusCode.PERMISSION_DENIED, "outside the folders"),
        ("/proc/self/environ", grpc.StatusCode.PERMISSION_DENIED, "never opened"),
        ("/dev/zero", grpc.StatusCode.PERMISSION_DENIED, "never opened"),
        ("fifo.jsonl", grpc.StatusCode.PERMISSION_DENIED, "a FIFO"),
        ("x" * 5000, grpc.StatusCode.INVALID_ARGUMENT, "max_path_chars"),
        ("data\x00.jsonl", grpc.StatusCode.INVALID_ARGUMENT, "NUL byte"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("missing.jsonl", grpc.StatusCode.INVALID_ARGUMENT, "does not exist"),
    ],
)
def test_paths_outside_the_roots_are_refused(tree, raw, code, needle):
    got, message = _code(lambda: _roots(tree).resolve(raw, "paths[0]"))
    assert got == code, message
    assert needle in message and "paths[0]" in message
    assert len(message) < 1000  # a 5000-character path is quoted as a short prefix
    assert "private" not in message.replace("private.txt", "")


def test_the_root_itself_may_be_a_symlink_and_relative_roots_mean_nothing_else(tree):
    (tree["root"] / "alias").symlink_to(tree["a"])
    roots = Roots("model_roots", [tree["root"] / "alias"])
    assert roots.resolve("data.jsonl", "p") == tree["a"] / "data.jsonl"
    empty = Roots("model_roots", [])
    got, message = _code(lambda: empty.resolve("data.jsonl", "tokenizer_path"))
    assert got == grpc.StatusCode.PERMISSION_DENIED and "model_roots" in message


def test_folders_are_listed_with_each_entry_checked(tree):
    """A symlink inside an allowed folder that leads out is refused, never followed or skipped."""
    roots = _roots(tree)
    got, message = _code(lambda: roots.files_in(tree["a"], "paths[0]", (".jsonl",)))
    assert got == grpc.StatusCode.PERMISSION_DENIED and "paths[0]" in message
    got, _ = _code(lambda: roots.check_folder(tree["a"], "tokenizer_path"))
    assert got == grpc.StatusCode.PERMISSION_DENIED
    (tree["a"] / "link-out.jsonl").unlink()
    (tree["a"] / "sub" / "escape").unlink()
    (tree["a"] / "fifo.jsonl").unlink()
    assert roots.files_in(tree["a"], "paths[0]", (".jsonl",)) == [
        tree["a"] / "data.jsonl",
        tree["a"] / "data.jsonl",  # link-in.jsonl, resolved
    ]


def test_writes_go_under_the_first_root_and_never_outside(tree):
    roots = Roots("export_roots", [tree["b"], tree["a"]])
    assert roots.resolve_for_write("new/out", "output_dir") == tree["b"] / "new" / "out"
    assert roots.resolve_for_write(str(tree["a"] / "x"), "output_dir") == tree["a"] / "x"
    for raw in ("../../x", "/tmp/elsewhere", str(tree["a"] / "sub" / "escape" / "x")):
        got, message = _code(lambda raw=raw: roots.resolve_for_write(raw, "output_dir"))
        assert got == grpc.StatusCode.PERMISSION_DENIED, (raw, message)
        assert "export_roots" in message
    got, _ = _code(lambda: roots.resolve_for_write(str(tree["a"] / "data.jsonl"), "output_dir"))
    assert got == grpc.StatusCode.INVALID_ARGUMENT  # a file is not a folder to write into


def test_ids_and_numbers():
    assert check_id("job-1", "job_id") == "job-1"
    got, message = _code(lambda: check_id("a" * 4096, "adapter.id"))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "max_id_chars" in message
    assert len(message) < 400
    got, _ = _code(lambda: check_id("a\nb", "job_id"))
    assert got == grpc.StatusCode.INVALID_ARGUMENT
    for value in (float("inf"), float("nan")):
        got, message = _code(lambda value=value: check_number(value, "lr", positive=True))
        assert "finite" in message
    got, message = _code(lambda: check_number(2**31 - 1, "world_size", maximum=64))
    assert "<= 64" in message


def test_a_whole_message_is_checked_through_its_descriptor():
    spec = t.TrainingJobSpec(job_id="j" * 300, stage=99, compute_dtype=99, output_dir="a\x00b")
    spec.hyperparameters.learning_rate = float("inf")
    spec.preference.beta = float("nan")
    spec.finetuning.lora.target_modules.extend(["q_proj"] * 300)
    found = {
        v.field: v.description for v in message_violations(spec, "spec", Limits(), {"job_id": 128})
    }
    assert set(found) == {
        "spec.job_id",
        "spec.stage",
        "spec.compute_dtype",
        "spec.output_dir",
        "spec.hyperparameters.learning_rate",
        "spec.preference.beta",
        "spec.finetuning.lora.target_modules",
    }
    assert "unknown value 99" in found["spec.stage"] and "STAGE_SFT" in found["spec.stage"]
    assert message_violations(t.TrainingJobSpec(job_id="ok", stage=t.STAGE_SFT), "spec") == []
