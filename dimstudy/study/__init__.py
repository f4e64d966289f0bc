"""Studies: the paper's ablations (Tab. 4, Tab. 6) and hyperparameter sweeps as Optuna trials.

- `config`  StudyConfig (+ EvalConfig, SweepConfig): the typed form of a study preset and the CLI options.
- `grid`    the variants of Tab. 4 (components) and Tab. 6 (scan patterns), one key per distinct network.
- `runner`  the Optuna side: enqueue each grid point once, claim trials, heartbeats, re-queue orphans.
- `trial`   one trial: train (resumable), sample, FID, one row.
- `rows`    the `runs` table's schema and files.
- `cells`   the grid's (variant, seed) cells that committed rows already hold; status and time left.
- `sweep`   samplers, pruners and the search space.
- `run`     what the commands do: run_grid, run_sweep, run_worker.
"""

from dimstudy.study.config import EvalConfig, StudyConfig, SweepConfig, list_presets, load_study_config
from dimstudy.study.grid import Variant, ablation_variants, make_variant, scan_variants
from dimstudy.study.rows import ROW_SCHEMA, read_runs

__all__ = [
    "ROW_SCHEMA",
    "EvalConfig",
    "StudyConfig",
    "SweepConfig",
    "Variant",
    "ablation_variants",
    "list_presets",
    "load_study_config",
    "make_variant",
    "read_runs",
    "scan_variants",
]
