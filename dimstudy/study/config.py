"""The study configuration: one typed dataclass per table of a study preset, mirroring the CLI options.

A study preset (`dimstudy/presets/studies/<name>.toml`) is a `StudyConfig`:

    name = "smoke"            # top-level keys: StudyConfig fields (seeds, drop, patterns, workers, ...)
    seeds = [0]
    [train]                   # a TrainConfig, exactly as `dimstudy train --preset` reads it
    model = "dim_tiny_2"
    [train.model_kwargs]
    [eval]                    # EvalConfig: how each trained model is sampled and scored
    num_samples = 200
    [sweep]                   # SweepConfig: only `dimstudy sweep` reads it
    n_trials = 8
    [sweep.space]
    lr = { low = 3e-4, high = 3e-3, log = true }

The defaults are the paper's CIFAR-10 setting (Sec. 4.5): DiM-S/2 trained as TrainConfig's defaults, then
FID-50K of Euler-Maruyama samples with 1000 steps against the CIFAR-10 training set.
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

from dimstudy.checks import SPLITS, check_ranges
from dimstudy.presets import STUDY_PRESETS
from dimstudy.train.config import RESUME_MAY_CHANGE, TrainConfig

# searched in this order: a project's own ./experiments/studies first, so that it can shadow a shipped preset
PRESET_DIRS = (Path("experiments/studies"), STUDY_PRESETS)


@dataclass
class EvalConfig:
    """How a trained model is scored: EMA weights, `num_samples` images, FID (and KID) against a reference."""

    num_samples: int = 50_000  # FID-50K (Sec. 4.5)
    sampler: str = "euler_maruyama"  # dimstudy.diffusion.samplers.SAMPLERS
    steps: int = 1000  # model evaluations per sample
    batch_size: int = 500  # images per sampling batch; also the unit a killed evaluation resumes from
    reference: str | None = None  # dataset name or image folder; None: the training dataset
    reference_split: str = "train"  # "train" (the paper's choice) or "test"
    num_reference: int | None = None  # reference images; None: all of them
    data_dir: str | None = None  # where the reference dataset lives; None: the training data_dir
    extractor: str = "auto"  # FID Inception source (dimstudy.metrics.EXTRACTORS)
    fid_weights: str | None = None  # a torch-fidelity Inception weights file, for machines without a download
    kid: bool = True
    fid_batch_size: int = 50  # Inception batch
    reference_seed: int = 0  # picks the reference subset; one value per study, so reference stats are shared
    grid: int = 64  # samples saved as a PNG grid per run (results/<study>/grids/); 0 = none
    cuda_graphs: bool = True  # on CUDA, sample with the network replayed from CUDA graphs (no effect on CPU)
    fid_halves: bool = True  # also score two disjoint halves of the samples: FID's own sampling noise

    def __post_init__(self):
        check_types(self)
        if self.reference_split not in SPLITS:
            raise ValueError(f"eval.reference_split must be {' or '.join(map(repr, SPLITS))}, got {self.reference_split!r}")
        check_ranges(num_samples=self.num_samples, steps=self.steps, batch_size=self.batch_size,
                     fid_batch_size=self.fid_batch_size)


@dataclass
class SweepConfig:
    """`dimstudy sweep`: a sampled hyperparameter search on Optuna.

    space: trial parameter -> distribution. A name is a TrainConfig field (`lr`, `ema_decay`, `warmup_steps`)
    or `model_kwargs.<flag>` (`model_kwargs.d_state`, `model_kwargs.depth`, `model_kwargs.dim`). A
    distribution is `{choices = [...]}`, or `{low, high}` with optional `log = true` and `step` (ints in both
    bounds give an integer parameter).
    """

    n_trials: int = 20  # trials in the study in total (workers share the count)
    sampler: str = "tpe"  # see dimstudy.study.sweep.SAMPLERS
    pruner: str = "median"  # see dimstudy.study.sweep.PRUNERS
    metric: str = "fid"  # the objective, minimised: "fid" or "loss" (mean loss of the last 10% of steps)
    report: str = "loss"  # what the pruner sees at each report: "loss" (running mean) or "fid" (a quick FID)
    report_every: int = 0  # steps between reports; 0: 10 reports per trial
    report_samples: int = 100  # samples of each intermediate FID (report = "fid")
    space: dict = field(default_factory=lambda: {
        "lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "ema_decay": {"choices": [0.99, 0.999, 0.9999]},
        "warmup_steps": {"low": 0, "high": 5000},
    })

    def __post_init__(self):
        check_types(self)
        if self.metric not in ("fid", "loss"):
            raise ValueError(f"sweep.metric must be 'fid' or 'loss', got {self.metric!r}")
        if self.report not in ("fid", "loss"):
            raise ValueError(f"sweep.report must be 'fid' or 'loss', got {self.report!r}")
        if self.n_trials < 1:
            raise ValueError(f"sweep.n_trials must be >= 1, got {self.n_trials}")


@dataclass
class StudyConfig:
    """A study: the grid or search to run, the TrainConfig every trial starts from, and the evaluation."""

    name: str = "default"  # Optuna study name; rows go to <results_dir>/<name>/, run dirs to <runs_dir>/<name>/
    preset: str = ""  # the preset this came from (recorded in every row)
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])  # every variant runs once per seed
    drop: list[str] = field(default_factory=lambda: ["each"])  # ablate: one variant per entry (see grid.py)
    patterns: list[str] = field(default_factory=lambda: ["1234", "12", "1"])  # scan-study: Tab. 6's rows
    results_dir: str = "results"
    runs_dir: str = "runs"  # checkpoints and loss logs (git-ignored); results_dir keeps only rows and reports
    storage: str | None = None  # Optuna RDB URL; None: sqlite:///<results_dir>/<name>/optuna.db
    workers: int = 1  # local worker processes pulling trials (several can share one GPU); 0: only enqueue
    nproc: int = 1  # GPUs per trial: >1 trains through `torchrun --nproc_per_node N -m dimstudy train`
    threads: int = 0  # torch CPU threads per worker; 0: cores // workers
    heartbeat_s: int = 20  # a RUNNING trial whose worker has not written for grace_s is re-queued
    grace_s: int = 90
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if isinstance(self.eval, dict):
            self.eval = _from_dict(EvalConfig, self.eval, "eval.")
        if isinstance(self.sweep, dict):
            self.sweep = _from_dict(SweepConfig, self.sweep, "sweep.")
        check_types(self)
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"study name must be a plain directory name, got {self.name!r}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        for name in ("nproc", "heartbeat_s", "grace_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grace_s <= self.heartbeat_s:
            raise ValueError(f"grace_s ({self.grace_s}) must exceed heartbeat_s ({self.heartbeat_s})")

    # -- paths ---------------------------------------------------------------------------------------------
    @property
    def study_dir(self) -> Path:
        """<results_dir>/<name>: the rows (runs.jsonl), loss curves, grids, the report, the default storage."""
        return Path(self.results_dir) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'optuna.db').as_posix()}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> StudyConfig:
        return _from_dict(cls, d, "")


# Settings that change no trial's result: a study reopened with other values for these is the same study.
STUDY_MAY_CHANGE = frozenset({"preset", "description", "seeds", "drop", "patterns", "results_dir", "runs_dir",
                              "storage", "workers", "threads", "heartbeat_s", "grace_s", "sweep.n_trials"})
TRAIN_MAY_CHANGE = RESUME_MAY_CHANGE - {"steps"}  # a study trains every trial to the same step count
EVAL_MAY_CHANGE = frozenset({"batch_size", "fid_batch_size", "data_dir", "grid", "fid_weights", "cuda_graphs",
                             "fid_halves"})  # (the same
# network wherever its file lives; each row records which Inception source ran)


def identity(cfg: StudyConfig) -> dict:
    """The settings every trial's result depends on; two configs with equal identities define the same study."""
    d = cfg.to_dict()
    out = {k: v for k, v in d.items() if k not in STUDY_MAY_CHANGE and k not in ("train", "eval", "sweep")}
    out["train"] = {k: v for k, v in d["train"].items() if k not in TRAIN_MAY_CHANGE}
    out["eval"] = {k: v for k, v in d["eval"].items() if k not in EVAL_MAY_CHANGE}
    out["sweep"] = {k: v for k, v in d["sweep"].items() if f"sweep.{k}" not in STUDY_MAY_CHANGE}
    return out


def identity_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'train.steps: 300 -> 500' for every identity setting that differs."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k in ("train", "eval", "sweep"):
            out += identity_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# -- presets -------------------------------------------------------------------------------------------------
def list_presets(dirs=None) -> list[str]:
    """Preset names in `dirs` (default: the study presets' folders)."""
    return sorted({p.stem for d in (dirs or PRESET_DIRS) if d.is_dir() for p in d.glob("*.toml")})


def resolve_preset(preset: str | Path, dirs=None) -> Path:
    """A preset name (`smoke`, searched in `dirs`: default ./experiments/studies then the package's) or a TOML
    path."""
    dirs = dirs or PRESET_DIRS
    path = Path(preset).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no preset file {path}")
        return path
    for d in dirs:
        if (d / f"{preset}.toml").is_file():
            return d / f"{preset}.toml"
    raise ValueError(f"unknown preset {str(preset)!r}; valid choices: {', '.join(list_presets(dirs))} (or a path to a .toml)")


def load_study_config(preset: str | Path | None = None, overrides: dict | None = None) -> StudyConfig:
    """StudyConfig from a preset (name or path), then `overrides` (nested like the TOML; None values are
    dropped, dicts merge, so `{"train": {"model_kwargs": {"d_state": 8}}}` keeps the preset's other flags).

    `name` defaults to the preset's file stem, `preset` records which preset it was.
    """
    d: dict = {}
    if preset is not None:
        path = resolve_preset(preset)
        d = tomllib.loads(path.read_text(encoding="utf-8"))
        d.setdefault("name", path.stem)
        d["preset"] = str(preset) if path.stem == str(preset) else str(path)
    d = deep_merge(d, drop_none(overrides or {}))
    return StudyConfig.from_dict(d)


def save_study_config(cfg: StudyConfig, path: str | Path) -> Path:
    """TOML that `load_study_config(path)` reads back into an equal config (None fields are left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(drop_none(cfg.to_dict())), encoding="utf-8")
    return path


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def drop_none(d: dict) -> dict:
    return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


# -- typing --------------------------------------------------------------------------------------------------
def _from_dict(cls, d: dict, prefix: str):
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; valid keys: {', '.join(prefix + n for n in names)}")
    return cls(**d)


def check_types(obj) -> None:
    """Check each field of a dataclass against its annotation, widening int -> float as TOML gives it.

    (TrainConfig has its own copy of this check for its own fields, in dimstudy.train.config.)
    """
    hints = typing.get_type_hints(type(obj))
    prefix = {EvalConfig: "eval.", SweepConfig: "sweep."}.get(type(obj), "")
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        base = typing.get_origin(allowed[0]) or allowed[0]
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif base is list and isinstance(value, tuple):
            value = list(value)
        ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
        if ok and base is list:
            (item,) = typing.get_args(allowed[0]) or (object,)
            ok = all(isinstance(v, item) and not (item is int and isinstance(v, bool)) for v in value)
        if not ok:
            name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ValueError(f"config key {prefix + f.name!r} expects {name}, got {value!r}")
        setattr(obj, f.name, value)
