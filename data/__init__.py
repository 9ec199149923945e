"""Text-classification data: sources and the `ClfDataModule`."""

from data.datamodule import ClfDataModule, Collator, LengthGroupedBatchSampler
from data.sources import READERS, load_data

__all__ = ["READERS", "ClfDataModule", "Collator", "LengthGroupedBatchSampler", "load_data"]
