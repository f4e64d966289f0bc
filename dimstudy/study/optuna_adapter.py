"""The places where dimstudy reaches below Optuna's public API, in one module, so an Optuna release that renames
them breaks here (and in tests/test_study.py's test of this module) rather than across the runner.

Workers claim WAITING trials, own them and beat their hearts through the study's storage, whose methods are
public (`BaseStorage`) but which a Study keeps in a private attribute, as a Trial keeps its storage id:
- `study._storage`: the storage (an RDBStorage inside Optuna's caching wrapper, `._backend`);
- `trial._trial_id`: the trial's id in that storage (its `number` counts within the study only).
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage


def storage(study: optuna.Study) -> BaseStorage:
    """The storage behind `study`."""
    return study._storage


def storage_url(study: optuna.Study) -> str:
    """The RDB URL behind a study (Optuna wraps its RDBStorage in a caching layer); '' for other storages."""
    s = storage(study)
    return getattr(getattr(s, "_backend", s), "url", "")


def trial_id(trial: optuna.Trial) -> int:
    """A running trial's id in its study's storage."""
    return trial._trial_id


def trial_id_of(study: optuna.Study, number: int) -> int:
    """The storage id of `study`'s trial `number` (a FrozenTrial's `number`)."""
    s = storage(study)
    return s.get_trial_id_from_study_id_trial_number(s.get_study_id_from_name(study.study_name), number)
