"""Model registry (timm style): `@register_model` presets, `create_model(name, **overrides)`, `list_models`.

Each preset is a function returning an `nn.Module`; its registry entry carries the paper's numbers for
that size, when the paper gives them, so `dimstudy models` and reports can show them side by side.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    family: str  # "dim" | "mamba" | "uvit"
    paper: dict = field(default_factory=dict)  # e.g. {"params_m": 50, "gflops": 12, "source": "Tab. 1"}
    note: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, paper: dict | None = None, note: str = ""):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, family, dict(paper or {}), note)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # The architecture modules register their presets when imported; they import this module, so not at its top.
    import dimstudy.models.dim  # noqa: F401
    import dimstudy.models.uvit  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell pattern, e.g. list_models('dim*')."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **overrides) -> nn.Module:
    """Build a preset; `None` overrides are dropped so CLI options can default to None."""
    entry = get_entry(name)
    try:
        model = entry.fn(**{k: v for k, v in overrides.items() if v is not None})
    except TypeError as e:  # a misspelt model_kwargs key is bad input, reported as one line (not a traceback)
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"unknown setting for {name}: {e}") from None
    model.registry_name = name
    return model
