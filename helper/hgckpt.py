"""`HgCkptIO`: Lightning's checkpoint I/O plus a loadable Hugging Face directory beside every saved checkpoint."""

from __future__ import annotations

from pathlib import Path

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from transformers import AutoConfig, AutoModelForSequenceClassification

HF_KEY = "hf_export"  # what a module puts into its checkpoint so that the plugin can rebuild its model


def hf_export_info(model, prefix: str, tokenizer) -> dict | None:
    """The `HF_KEY` entry of a checkpoint: the model's config, where its weights sit in the state dict, and where its
    tokenizer loads from. None for a module that is not a Hugging Face model (it gets the .ckpt only)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    name = getattr(tokenizer, "name_or_path", None)
    return {"prefix": prefix, "config": config.to_dict(), "tokenizer": str(name) if name else None}


class HgCkptIO(TorchCheckpointIO):
    """Saves each checkpoint as `TorchCheckpointIO` does, then writes `<checkpoint stem>_hf/` beside it: the student
    (distillers) or the model (`ClfFinetune`) as a Hugging Face directory (safetensors, config, tokenizer) that
    `AutoModelForSequenceClassification.from_pretrained` loads with no project code (a BiLSTM student needs
    `import bert.bilstm`). Written atomically; removed together with its checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        info = checkpoint.get(HF_KEY)
        if info is not None:
            self.write_hf(checkpoint["state_dict"], info, hf_dir(path))

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        import shutil

        shutil.rmtree(hf_dir(path), ignore_errors=True)

    @staticmethod
    def write_hf(state_dict: dict, info: dict, out: Path) -> Path:
        from transformers import AutoTokenizer

        from helper.checkpoint import RUNTIME_FLAGS, export_hf

        config = {k: v for k, v in info["config"].items() if k not in RUNTIME_FLAGS}
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
        prefix = info["prefix"]
        model.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)})
        tokenizer = AutoTokenizer.from_pretrained(info["tokenizer"]) if info.get("tokenizer") else None
        return export_hf(model, tokenizer, out)


def hf_dir(ckpt_path) -> Path:
    """`checkpoints/best.ckpt` -> `checkpoints/best_hf`."""
    path = Path(ckpt_path)
    return path.with_name(f"{path.stem}_hf")
