"""Where this machine's caches live, without torch: `imageclf predict` finds its compiled models here quickly."""

import os
from pathlib import Path

CACHE_ENVIRONMENT_VARIABLE = "IMAGECLF_FEATURE_CACHE"


def cache_dir() -> Path:
    """`$IMAGECLF_FEATURE_CACHE`, else `$XDG_CACHE_HOME/study-classification/features` (`~/.cache/...`)."""
    if os.environ.get(CACHE_ENVIRONMENT_VARIABLE):
        return Path(os.environ[CACHE_ENVIRONMENT_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "study-classification" / "features"
