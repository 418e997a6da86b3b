"""Recipes, and what a ``TrainingJobSpec`` means to them: defaults resolved, invalid specs refused.

``validate(spec)`` (``validation.py``) is what the service calls before it launches a job: it
checks the whole spec up front and raises one ``InvalidArgument`` listing every bad field
(``spec.compute_dtype``, ``spec.finetuning.lora.rank``, ...), or ``Unimplemented`` for a stage or
method this version does not train yet. ``settings(spec, device)`` (``spec_settings.py``) turns a
valid spec into ``Settings``, a frozen record with every proto default of ``training.proto``
filled in, which is all the recipes read.

The recipes themselves (``pt``, ``sft``, ``rm``, ``dpo``, ``ppo``) live in their own modules;
``RECIPES`` maps a stage to one.
"""

from services.training.recipes.spec_settings import (
    ATTENTION,
    DTYPES,
    METHODS,
    PREFERENCE_LOSSES,
    QUANTIZATION_TYPES,
    RECIPES,
    REFERENCED,
    ROPE_SCALING,
    SCHEDULERS,
    FreezeSettings,
    GaloreSettings,
    LoraSettings,
    PpoSettings,
    PreferenceSettings,
    Settings,
    base_model_dtype,
    settings,
)
from services.training.recipes.validation import validate

__all__ = [
    "ATTENTION",
    "DTYPES",
    "FreezeSettings",
    "GaloreSettings",
    "LoraSettings",
    "METHODS",
    "PREFERENCE_LOSSES",
    "PpoSettings",
    "PreferenceSettings",
    "QUANTIZATION_TYPES",
    "RECIPES",
    "REFERENCED",
    "ROPE_SCALING",
    "SCHEDULERS",
    "Settings",
    "base_model_dtype",
    "settings",
    "validate",
]
