"""Text-classification data: sources and the `ClfDataModule`."""
