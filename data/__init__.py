"""Text-classification data: sources and the `ClfDataModule`.

The names below load on first use, so that `data.config` (read by every stage script before anything else) does not
pull in torch and Lightning through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "ClfDataModule": "data.data_module",
    "Collator": "data.data_module",
    "LengthGroupedBatchSampler": "data.data_module",
    "READERS": "data.sources",
    "load_data": "data.sources",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
