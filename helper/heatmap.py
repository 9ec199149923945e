"""`AttentionHeatmap`: a callback drawing teacher-vs-student last-layer attention of one fixed validation example at
each validation, as a PNG under the run directory and a wandb or TensorBoard image."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from bert.families import model_inputs
from bert.features import ModelDims
from bert.recorder import FeatureRecorder

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # imported when the first figure is drawn: not at every stage's start

MAX_TOKENS = 32  # longer examples are cropped: the picture stays small and cheap to draw


class AttentionHeatmap(pl.Callback):
    """Keeps the first example of the first validation batch; draws it after every validation (rank 0 only).

    The pl_module must have `teacher` and `student` encoders; tokens are labelled with the data module's tokenizers.
    A failure to draw is a warning, never a stop.
    """

    def __init__(self, out_dir: str | Path | None):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.example: dict | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.example is None and batch_idx == 0:
            self.example = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            if "student" in batch:
                self.example["student"] = {k: v[:1] for k, v in batch["student"].items()}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.example is None or not trainer.is_global_zero:
            return
        try:
            self.draw(trainer, pl_module)
        except Exception as err:  # a diagnostic image must never stop training
            warnings.warn(f"attention heatmap skipped: {type(err).__name__}: {err}", stacklevel=1)

    def draw(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        tok_t = getattr(dm, "tokenizer", None)
        tok_s = getattr(dm, "student_tokenizer", None) or tok_t
        example = self.example
        parts = ((pl_module.teacher, example, tok_t), (pl_module.student, example.get("student", example), tok_s))
        maps, tokens = [], []
        with torch.no_grad():
            for model, inputs, tok in parts:
                n = min(int(inputs["attention_mask"][0].sum()), MAX_TOKENS)
                last = ModelDims.of(model.config).num_layers - 1
                inputs = {k: v.to(pl_module.device) for k, v in model_inputs(inputs, model).items()}
                with FeatureRecorder(model, {"attentions": [last]}) as rec:
                    maps.append(rec(**inputs)[1].attentions[last][0].float().cpu())  # (h, T, T)
                ids = inputs["input_ids"][0, :n].tolist()
                tokens.append(tok.convert_ids_to_tokens(ids) if tok is not None else [str(i) for i in ids])
        image = attention_image(maps[0], maps[1], tokens[0], tokens[1], title=f"epoch {trainer.current_epoch}")
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            image.save(
                self.out_dir / f"epoch{trainer.current_epoch:02d}_step{trainer.global_step}.png", compress_level=1
            )
        for logger in trainer.loggers:  # wandb and TensorBoard take images; the other loggers are skipped
            if hasattr(logger, "log_image"):
                logger.log_image(key="attention", images=[image], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("attention", np.asarray(image), trainer.global_step, dataformats="HWC")


def _attention_map(attn, head: int | None, n: int):
    a = torch.as_tensor(attn).detach().float().cpu()
    if a.dim() == 3:
        a = a.mean(0) if head is None else a[head]  # (h, T, T) -> (T, T)
    if a.dim() != 2 or a.shape[0] < n:
        raise ValueError(f"attention_figure: expected (h, T, T) or (T, T) with T >= {n} tokens, got {tuple(a.shape)}")
    return a[:n, :n].numpy()  # (n, n)


def attention_image(
    attn_t,
    attn_s,
    tokens_t: list[str],
    tokens_s: list[str] | None = None,
    *,
    head: int | None = None,
    title: str = "attention",
    cell: int = 12,
):
    """The picture of `attention_figure` drawn directly with PIL, as the callback uses it at every validation: a PIL
    RGB image of both maps (`cell` pixels per token, viridis on one colour scale) with token labels on both axes.

    Matplotlib's tick machinery spends about a second laying out the 128 token labels of two 32-token maps; this takes
    a few tens of milliseconds.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw, ImageFont

    tokens_s = tokens_t if tokens_s is None else tokens_s
    maps = (_attention_map(attn_t, head, len(tokens_t)), _attention_map(attn_s, head, len(tokens_s)))
    vmax = float(max(m.max() for m in maps)) or 1.0
    font = ImageFont.load_default(size=cell - 2)
    margin = int(max(font.getlength(t) for t in (*tokens_t, *tokens_s))) + 6  # room for the longest label
    line = cell + 6  # one line of title text
    which = "mean over heads" if head is None else f"head {head}"
    panels = []
    for name, amap, tokens in zip(("teacher", "student"), maps, (tokens_t, tokens_s)):
        n = len(tokens)
        rgb = (colormaps["viridis"](np.clip(amap / vmax, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)  # (n, n, 3)
        panel = Image.new("RGB", (margin + n * cell + 8, line + n * cell + margin), "white")
        panel.paste(Image.fromarray(rgb).resize((n * cell, n * cell), Image.NEAREST), (margin, line))
        draw = ImageDraw.Draw(panel)
        draw.text((margin, line - 3), f"{name} ({which}); rows query, columns key", "black", font, anchor="ld")
        labels = Image.new("RGB", (margin, n * cell), "white")  # the key labels, drawn across, then turned upright
        draw_labels = ImageDraw.Draw(labels)
        for i, token in enumerate(tokens):
            y = i * cell + cell / 2
            draw.text((margin - 3, line + y), token, "black", font, anchor="rm")
            draw_labels.text((margin - 3, y), token, "black", font, anchor="rm")
        panel.paste(labels.rotate(90, expand=True), (margin, line + n * cell))
        panels.append(panel)
    out = Image.new("RGB", (sum(p.width for p in panels), line + max(p.height for p in panels)), "white")
    ImageDraw.Draw(out).text((4, line - 3), f"{title} (colour scale 0 to {vmax:.2f})", "black", font, anchor="ld")
    for i, panel in enumerate(panels):
        out.paste(panel, (sum(p.width for p in panels[:i]), line))
    return out


def attention_figure(
    attn_t,
    attn_s,
    tokens_t: list[str],
    tokens_s: list[str] | None = None,
    *,
    head: int | None = None,
    title: str = "attention",
) -> Figure:
    """Teacher and student attention of one example and one layer side by side, on one colour scale (a matplotlib
    figure, for reports and notebooks; the callback draws the same picture faster with `attention_image`).

    `attn_*` are (h, T, T) probabilities (averaged over heads unless `head` is given) or (T, T); positions beyond the
    tokens (padding) are cropped. `tokens_s` defaults to `tokens_t` (shared tokenizer).
    """
    from matplotlib.figure import Figure

    tokens_s = tokens_t if tokens_s is None else tokens_s
    map_t = _attention_map(attn_t, head, len(tokens_t))
    map_s = _attention_map(attn_s, head, len(tokens_s))
    vmax = float(max(map_t.max(), map_s.max()))
    longest = max(len(tokens_t), len(tokens_s))
    side = min(12.0, max(4.0, 0.22 * longest + 1.5))
    fontsize = max(4.0, min(9.0, 300 / longest))
    fig = Figure(figsize=(2 * side, side + 0.6), layout="constrained")
    which = "mean over heads" if head is None else f"head {head}"
    for ax, name, amap, tokens in zip(fig.subplots(1, 2), ("teacher", "student"), (map_t, map_s), (tokens_t, tokens_s)):
        ax.imshow(amap, cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=fontsize)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"{name} ({which})")
    fig.suptitle(f"{title} (colour scale 0 to {vmax:.2f})")
    return fig
