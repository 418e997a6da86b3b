"""Names of base models, for a cluster that serves more than one.

A rollout or reward service serves one base model (a Hugging Face folder); its **base name** is
the folder's last path part, lower-cased, with every character outside ``[a-z0-9._-]`` replaced by
``-`` (``/models/Qwen2.5-0.5B`` -> ``qwen2.5-0.5b``). The same function names a training job's
base (its ``spec.base_model``), the rollout services' queues and the API's model list, so a PPO
job's tasks reach the workers of its own base and an adapter is served over the base it was
trained on. Shared by the client (``llamafleet up``, the API) and the services; no torch.

Queues (``services.common.queues.rollout_tasks_stream``): the cluster's **default base** keeps
the single-base stream names (``llamafleet:rollout:tasks``, ``llamafleet:rollout:results``); each
other base has its own (``llamafleet:rollout:tasks:<name>``, ``...:results:<name>``).
``llamafleet up`` always names the default base (the first ``--base-model``), so a one-base
cluster names nothing differently and ``llamafleet add-base`` can add another later; services
configured without a default base (compose with one base) use the single-base names for every
base.
"""

from __future__ import annotations

import re
from pathlib import PurePath

BASE_ALIAS = "base"  # the model name of the default base (besides its own name)
_VALID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_OUTSIDE = re.compile(r"[^a-z0-9._-]")


def base_name(model: str) -> str:
    """The base name of the model folder (or hub id) ``model``: see the module docstring."""
    last = PurePath(str(model).rstrip("/\\")).name
    name = _OUTSIDE.sub("-", last.lower()).lstrip("._-")[:64]
    if not name:
        raise ValueError(f"base model {model!r}: its folder name gives no usable base name")
    return name


def check_base_name(name: str, where: str) -> str:
    """``name`` if it is a valid base name, else ValueError naming ``where`` it came from."""
    if not _VALID.fullmatch(name):
        raise ValueError(
            f"{where}: {name!r} is not a base name (1-64 of a-z 0-9 . _ -, starting with a "
            "letter or digit)"
        )
    return name
