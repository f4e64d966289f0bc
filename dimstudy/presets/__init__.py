"""The presets shipped inside the package, so that a wheel install has them (pyproject.toml's package data):
TrainConfig files (`dimstudy train --preset NAME`) here, study presets (`dimstudy ablate --preset NAME`) in studies/.

Found through importlib.resources rather than the repository's path: an installed package has no repository.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# a plain folder for an installed or checked-out package (the only kinds dimstudy is installed as: no zip imports)
TRAIN_PRESETS = Path(str(files(__name__)))
STUDY_PRESETS = TRAIN_PRESETS / "studies"
