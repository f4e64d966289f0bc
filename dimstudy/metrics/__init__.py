"""Sample-quality metrics: FID, sFID, KID, precision/recall and IS on the FID Inception (see `fid`), and
ADM-format reference `.npz` files (see `reference`)."""

from dimstudy.metrics.fid import (
    EXTRACTORS,
    Extractor,
    FeatureExtractorUnavailableError,
    compute_metrics,
    fid_main,
    format_metrics,
    frechet_distance,
    reference_statistics,
    resolve_extractor,
)
from dimstudy.metrics.reference import read_reference_npz, write_stats_npz

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "FeatureExtractorUnavailableError",
    "compute_metrics",
    "fid_main",
    "format_metrics",
    "frechet_distance",
    "read_reference_npz",
    "reference_statistics",
    "resolve_extractor",
    "write_stats_npz",
]
