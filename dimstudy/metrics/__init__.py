"""Sample-quality metrics: FID, KID, precision/recall and IS through torch-fidelity (see `fid`)."""

from dimstudy.metrics.fid import (
    EXTRACTORS,
    Extractor,
    FeatureExtractorUnavailableError,
    compute_metrics,
    fid_main,
    frechet_distance,
    resolve_extractor,
)

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "FeatureExtractorUnavailableError",
    "compute_metrics",
    "fid_main",
    "frechet_distance",
    "resolve_extractor",
]
