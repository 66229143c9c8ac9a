"""Frozen feature extraction and its on-disk cache."""

from .cache import cache_key, default_cache_dir, extract_features, state_digest
from .featureset import FeatureSet

__all__ = ["FeatureSet", "cache_key", "default_cache_dir", "extract_features", "state_digest"]
