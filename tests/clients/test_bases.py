"""Base names: one function names a base model folder for queues, model lists and routing."""

from __future__ import annotations

import pytest
from llamafleet.bases import base_name, check_base_name


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("/models/Qwen2.5-0.5B", "qwen2.5-0.5b"),
        ("/models/tiny/", "tiny"),  # a trailing slash names the same folder
        ("meta-llama/Llama 3 8B", "llama-3-8b"),  # a hub id: its last part
        ("/models/tiny:v2", "tiny-v2"),  # ':' would split stream names
        ("relative/.hidden", "hidden"),
    ],
)
def test_a_base_is_named_by_its_folder(model, name):
    assert base_name(model) == name
    assert check_base_name(name, "here") == name


@pytest.mark.parametrize("model", ["", "/", "/models/..."])
def test_a_folder_without_a_usable_name_is_an_error(model):
    with pytest.raises(ValueError, match="gives no usable base name"):
        base_name(model)


def test_a_bad_configured_name_says_where_it_came_from():
    with pytest.raises(ValueError, match=r"default_base: 'a:b' is not a base name"):
        check_base_name("a:b", "default_base")
