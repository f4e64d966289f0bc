"""The one run configuration: `TrainConfig`, whose defaults are the paper's CIFAR-10 settings.

Those settings are U-ViT's, which DiM copied (project notes, "Training settings"): continuous VP-SDE,
AdamW lr 2e-4, wd 0.03 on all parameters, betas (0.99, 0.999), 2500-step linear warm-up then constant,
EMA 0.9999, batch 128, 500K steps, random flip. Experiment files (TOML) load into this dataclass, CLI
flags override its fields, and every checkpoint stores it as a dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import tomli_w

from dimstudy.checks import PRECISIONS, check_choice, check_ranges

# Fields a resumed run may change; any other difference from the checkpoint's config is refused.
RESUME_MAY_CHANGE = frozenset(
    {"steps", "out_dir", "data_dir", "device", "ckpt_every", "keep_every", "log_every", "sample_every",
     "num_workers", "compile", "results_dir"}
)
# the numeric fields whose range dimstudy.checks holds (the same limits as the CLI flags of the same name)
CHECKED = ("resolution", "batch_size", "steps", "grad_accum", "ckpt_every", "log_every", "warmup_steps", "keep_every",
           "sample_every", "num_workers", "lr", "weight_decay", "ema_decay", "p_uncond", "grad_clip")


@dataclass
class TrainConfig:
    # what to train
    model: str = "dim_s_2"
    model_kwargs: dict = field(default_factory=dict)  # create_model overrides: component flags, scan_patterns, ...
    dataset: str = "cifar10"
    resolution: int = 32
    data_dir: str | None = None
    class_cond: bool = False
    schedule: str = "vpsde"
    init_from: str | None = None  # weights to start from instead of a fresh init: a state dict, or a checkpoint or
    # run directory, whose EMA weights are taken (train.checkpoint.read_init_weights says why); the EMA starts equal
    # to them (weak-to-strong fine-tune, see dimstudy.resolution). Ignored when resuming.
    skip_unreadable: bool = False  # dataset "folder": leave out unreadable files (one warning) instead of stopping
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.99, 0.999)
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 2500  # linear warm-up, then constant
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t)) at step t; off in U-ViT/DiM (see train.ema)
    batch_size: int = 128  # images per optimiser step, summed over ranks and accumulation steps
    steps: int = 500_000  # optimiser steps in total (a resumed run continues up to this)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    grad_accum: int = 1  # micro-batches per optimiser step
    hflip: bool = True  # random horizontal flip, p = 0.5
    p_uncond: float | None = None  # label dropout for CFG; None: 0.1 when class_cond, else 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; fp16 uses a GradScaler
    seed: int = 0
    # where and how
    device: str = "auto"  # auto: cuda if available, else cpu
    out_dir: str = "runs/default"
    ckpt_every: int = 5000  # overwrite latest.pt every this many steps (and at the end)
    keep_every: int = 0  # also keep step_XXXXXXXX.pt every this many steps; 0 = off
    log_every: int = 10  # progress-bar refresh; the loss log gets every step
    sample_every: int = 0  # EMA sample grid under out_dir/samples every this many steps; 0 = off
    num_workers: int = 4
    compile: bool = False
    results_dir: str | None = None  # also append the run summary to <results_dir>/train.jsonl

    def __post_init__(self):
        _coerce_fields(self)
        if self.p_uncond is None:
            self.p_uncond = 0.1 if self.class_cond else 0.0
        check_choice("precision", self.precision, PRECISIONS)
        check_ranges(**{name: getattr(self, name) for name in CHECKED})
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.skip_unreadable and self.dataset != "folder":
            raise ValueError(f"--skip-unreadable applies to the folder dataset, not {self.dataset!r}")

    def to_dict(self) -> dict:
        """Plain dict (betas as a list), the form stored in checkpoints and result rows."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> TrainConfig:
        """Build from a dict plus overrides (None overrides are dropped); unknown keys -> ValueError."""
        merged = {**d, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(merged) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(field_names())}")
        return cls(**merged)


def standin_model_kwargs(cfg: TrainConfig) -> dict:
    """create_model's keywords for `cfg`, with the input the dataset would give, known without loading it: for
    `latents`, resolution / 8 with 4 channels (the SD VAE that `dimstudy encode` uses), else resolution with 3;
    model_kwargs override both, and num_classes."""
    latent = cfg.dataset == "latents"
    return {"img_size": cfg.resolution // 8 if latent else cfg.resolution, "in_chans": 4 if latent else 3,
            "num_classes": 1000 if cfg.class_cond else 0,  # a stand-in: training reads the count from the data
            **cfg.model_kwargs}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(path: str | Path | dict | None = None, **overrides) -> TrainConfig:
    """TrainConfig from a TOML file (top-level keys = fields, `[model_kwargs]` table) or such a dict, then overrides.

    `model_kwargs` overrides are merged into the file's table rather than replacing it.
    """
    if isinstance(path, dict):
        d = dict(path)
    else:
        d = tomllib.loads(Path(path).read_text(encoding="utf-8")) if path is not None else {}
    if overrides.get("model_kwargs"):
        overrides["model_kwargs"] = {**d.get("model_kwargs", {}), **overrides["model_kwargs"]}
    return TrainConfig.from_dict(d, **overrides)


def parse_set(items: list[str]) -> dict:
    """['lr=1e-4', 'model_kwargs.scan_patterns="12"'] -> {'lr': 1e-4, 'model_kwargs': {'scan_patterns': '12'}}.

    Values are read as TOML values; one that is not valid TOML is taken as a bare string (dataset=digits).
    """
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, leaf = key.strip().split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write TOML that `load_config` reads back into an equal config (TOML has no null: None fields are left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {k: v for k, v in cfg.to_dict().items() if v is not None}
    d["model_kwargs"] = d.pop("model_kwargs")  # tables must come after plain keys
    path.write_text(tomli_w.dumps(d), encoding="utf-8")
    return path


def _coerce_fields(cfg: TrainConfig) -> None:
    """Check each field against its annotation; widen int -> float and list -> tuple, as TOML/JSON give them."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        base = typing.get_origin(allowed[0]) or allowed[0]  # str | None -> str; tuple[float, float] -> tuple
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif base is tuple and isinstance(value, list):
            value = tuple(float(v) for v in value)
        ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
        if not ok:
            raise ValueError(f"config key {f.name!r} expects {_type_name(hint)}, got {value!r}")
        setattr(cfg, f.name, value)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
