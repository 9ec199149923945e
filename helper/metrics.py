"""Classification metrics by name, per evaluation set, plus a user's own scoring functions (`Scores`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
    MulticlassPrecision,
    MulticlassRecall,
)

from bert.errors import UserError
from helper.config import DEFAULT_METRICS, METRICS

# name in `trainer.metrics` -> (log key, torchmetrics factory of the class count)
_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "accuracy": lambda c: MulticlassAccuracy(num_classes=c, average="micro"),
    "f1_macro": lambda c: MulticlassF1Score(num_classes=c, average="macro"),
    "f1_micro": lambda c: MulticlassF1Score(num_classes=c, average="micro"),
    "precision_macro": lambda c: MulticlassPrecision(num_classes=c, average="macro"),
    "recall_macro": lambda c: MulticlassRecall(num_classes=c, average="macro"),
    "mcc": lambda c: MulticlassMatthewsCorrCoef(num_classes=c),
    "kappa": lambda c: MulticlassCohenKappa(num_classes=c),
}
Scorer = Callable[[torch.Tensor, torch.Tensor], float]  # (logits (N, C), labels (N,)) -> a number


def clf_metrics(num_labels: int, prefix: str, names: Sequence[str] = DEFAULT_METRICS) -> MetricCollection:
    """The metrics `names` (`helper.config.METRICS`), logged as `<prefix><key>` (accuracy -> acc, f1_macro -> f1)."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"trainer.metrics: unknown metric {unknown[0]!r} (choices: {', '.join(METRICS)})")
    return MetricCollection({METRICS[n]: _FACTORIES[n](num_labels) for n in names}, prefix=prefix)


class Scores(nn.Module):
    """The metrics of one split (`val`, `test`, `teacher/val`) on each evaluation set.

    With one set the keys are `<split>/<key>`; with several named sets each also logs `<split>/<set>/<key>`, and the
    first set is the one under `<split>/<key>` (the default `trainer.monitor`). `scorers` are the user's functions of
    the set's logits and labels, computed once per evaluation on everything seen (gathered across processes).
    """

    def __init__(
        self,
        num_labels: int,
        split: str,
        sets: Sequence[str] | None = None,
        names: Sequence[str] = DEFAULT_METRICS,
        scorers: Mapping[str, Scorer] | None = None,
    ):
        super().__init__()
        self.split, self.sets = split, list(sets or [""])
        self.collections = nn.ModuleList(clf_metrics(num_labels, "", names) for _ in self.sets)
        self.scorers = dict(scorers or {})
        self._seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.sets]

    def update(self, logits: torch.Tensor, labels: torch.Tensor, set_index: int = 0) -> None:
        self.collections[set_index].update(logits, labels)
        if self.scorers:
            self._seen[set_index].append((logits.detach().float(), labels.detach()))

    def log(self, module: pl.LightningModule, prog_bar: bool = False) -> dict[str, float]:
        """Compute, log and reset; returns what was logged."""
        logged: dict[str, float] = {}
        for i, (name, collection) in enumerate(zip(self.sets, self.collections)):
            if not any(m.update_called for m in collection.values()):
                continue
            values = {k: float(v) for k, v in collection.compute().items()}
            values.update(self._scored(module, i))
            prefixes = [f"{self.split}/"] if i == 0 else []
            if name and len(self.sets) > 1:
                prefixes.append(f"{self.split}/{name}/")
            for prefix in prefixes:
                for key, value in values.items():
                    module.log(prefix + key, value, prog_bar=prog_bar and prefix == f"{self.split}/", sync_dist=False)
                    logged[prefix + key] = value
            collection.reset()
            self._seen[i].clear()
        return logged

    def _scored(self, module: pl.LightningModule, i: int) -> dict[str, float]:
        if not self.scorers or not self._seen[i]:
            return {}
        logits = torch.cat([x for x, _ in self._seen[i]])  # (N, C)
        labels = torch.cat([y for _, y in self._seen[i]])  # (N,)
        if module.trainer.world_size > 1:
            logits = module.all_gather(logits).flatten(0, 1)  # (world * N, C)
            labels = module.all_gather(labels).flatten(0, 1)
        out = {}
        for name, scorer in self.scorers.items():
            value = scorer(logits.cpu(), labels.cpu())
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                raise UserError(f"scorer {name!r} returned {type(value).__name__}, not a number") from None
        return out


def retrieval_accuracy(queries: torch.Tensor, candidates: torch.Tensor) -> tuple[float, float]:
    """Translation retrieval: row i of `queries` (N, H) and of `candidates` (N, H) are translations of each other.
    Returns (the fraction of queries whose nearest candidate by cosine is their own, the same from the candidates to
    the queries); on ties the first row counts. Reimers & Gurevych 2020 (arXiv:2004.09813), section 4.3."""
    if queries.shape != candidates.shape:
        raise ValueError(f"retrieval_accuracy: shapes {tuple(queries.shape)} and {tuple(candidates.shape)} differ")
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T  # (N, N)
    target = torch.arange(len(sims), device=sims.device)
    return (sims.argmax(1) == target).float().mean().item(), (sims.argmax(0) == target).float().mean().item()
