"""Transfer set (Tang et al. 2019, arXiv:1903.12136): the training set, augmented (and LM-sampled, and unlabelled)
text, every row labelled by the fine-tuned teacher, written to one Parquet file for `data.transfer`."""

from __future__ import annotations

from helper.config import TransferSetConfig, run_cli


def main(cfg: TransferSetConfig):
    from helper.stages import run_transfer_set  # heavy imports only once the config is checked

    return run_transfer_set(cfg)


if __name__ == "__main__":
    run_cli(TransferSetConfig, "transfer_set.yaml", main)
