"""d-heavy transfer sets: sentences sampled from a causal language model (Tang et al. 2019, "Natural Language
Generation for Effective Knowledge Distillation", DeepLo workshop; the transfer-set idea of Tang et al. 2019,
arXiv:1903.12136, §3.3), optionally after fine-tuning the LM on the training text.

Every sample is prompted with the first `prefix_words` whitespace words of a training sentence (drawn with
`random.Random(seed)`) after the LM's start token (bos, else eos), and continues until eos, `max_new_tokens` or the
first line break. Outputs are stripped, whitespace-normalised, non-empty, distinct, never a training sentence, and
free of U+FFFD (a byte-level LM cut inside a character, or emitting invalid bytes: such samples are dropped).
Fine-tuning (plain torch: AdamW, causal-LM loss, `start + sentence + eos` per example) and sampling run under
`torch.random.fork_rng` seeded with `seed`, so a run is reproducible on one device and the caller's RNG is untouched.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bert.errors import UserError
from bert.sections import AT_LEAST_1, COUNT, MAX_COUNT, POSITIVE, SEED, TEXT, Num, Section
from data.progress import Progress

PROGRESS_EVERY_S = 5.0  # a progress line on stderr at most this often
DEVICE = r"auto|cpu|mps|cuda(:\d{1,9})?"  # checked without torch: reading a config must not load it
MAX_DRAWS_PER_SENTENCE = 10  # give up after count * this many samples (duplicates, empty lines)


@dataclass(frozen=True)
class GenerateConfig(Section):
    """Settings of the LM transfer set (Tang et al. 2019, DeepLo); keys are `transfer.generate.<field>`."""

    SECTION = "transfer.generate"
    RULES = {
        "model": TEXT,
        "count": AT_LEAST_1,
        "prefix_words": AT_LEAST_1,
        "top_k": COUNT,
        "top_p": Num(0, 1, lo_open=True),
        "temperature": POSITIVE,
        "min_new_tokens": COUNT,
        "max_new_tokens": AT_LEAST_1,
        "batch_size": AT_LEAST_1,
        "finetune_epochs": COUNT,
        "finetune_lr": POSITIVE,
        "finetune_batch_size": AT_LEAST_1,
        "finetune_max_length": Num(3, MAX_COUNT, integer=True),  # start + at least one token + eos
        "device": TEXT,
        "seed": SEED,
    }

    model: str = "gpt2"  # hub name or local directory of any AutoModelForCausalLM (with its tokenizer)
    count: int = 1000  # sentences to produce
    prefix_words: int = 2  # prompt: the first k words of a training sentence longer than k words
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # nucleus sampling; 1.0: off
    temperature: float = 1.0  # sampling temperature
    min_new_tokens: int = 1  # tokens generated at least per sample
    max_new_tokens: int = 48  # tokens generated at most per sample
    batch_size: int = 32  # prompts per generate call
    finetune_epochs: int = 0  # 0: sample from the LM as it is
    finetune_lr: float = 5e-5  # AdamW learning rate of the fine-tuning
    finetune_batch_size: int = 8  # sentences per fine-tuning step
    finetune_max_length: int = 64  # tokens per training sentence, start and eos included
    device: str = "auto"  # "auto": cuda when available, else cpu
    seed: int = 0  # seeds the prompt draws, the fine-tuning and the sampling

    def check(self) -> None:
        if self.min_new_tokens > self.max_new_tokens:
            self.fail("min_new_tokens", f"{self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")
        if not re.fullmatch(DEVICE, self.device):
            self.fail("device", f"{self.device!r} is not a torch device (auto, cpu, cuda, cuda:N, mps)")


def load_lm(name: str):
    """(model, tokenizer) of a causal LM from a hub name or a directory; a UserError naming it if it does not load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except Exception as err:  # from_pretrained raises OSError, ValueError, HF validation errors, ...
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"transfer.generate.model: cannot load {name!r} as a causal LM ({why})") from err
    return model, tokenizer


def generate(texts: Sequence[str], cfg: GenerateConfig | None = None) -> list[str]:
    """`cfg.count` new sentences from `cfg.model` (fine-tuned on `texts` first when `cfg.finetune_epochs` > 0),
    prompted with training prefixes; fewer (with one line on stderr) if the LM keeps repeating itself."""
    import torch

    cfg = cfg or GenerateConfig()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"transfer.generate.device: {cfg.device!r} but torch sees no CUDA device (choices: auto, cpu)")
    normal = [" ".join(t.split()) for t in texts]
    prompts = [" ".join(w.split()[: cfg.prefix_words]) for w in normal if len(w.split()) > cfg.prefix_words]
    if not prompts:
        raise UserError(f"transfer.generate.prefix_words: no training sentence is longer than {cfg.prefix_words} words")
    model, tokenizer = load_lm(cfg.model)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None or tokenizer.eos_token_id is None:
        raise UserError(f"transfer.generate.model: the tokenizer of {cfg.model!r} has no eos token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.to(device)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        if cfg.finetune_epochs:
            finetune(model, tokenizer, [t for t in normal if t], cfg, start, pad, device)
        return _sample(model, tokenizer, prompts, set(normal), cfg, start, pad, device)


def finetune(model, tokenizer, texts: list[str], cfg: GenerateConfig, start: int, pad: int, device) -> None:
    """`cfg.finetune_epochs` epochs of causal-LM loss on `start + text + eos`, AdamW, shuffled batches."""
    import torch

    from data.padding import pad_batch

    keep, eos = cfg.finetune_max_length - 2, tokenizer.eos_token_id  # room for start and eos
    examples = [[start, *tokenizer(t, add_special_tokens=False)["input_ids"][:keep], eos] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.finetune_lr)
    order = random.Random(cfg.seed)
    progress = Progress(
        "transfer.generate: fine-tune", cfg.finetune_epochs * len(examples), "sentences", PROGRESS_EVERY_S
    )
    model.train()
    for _ in range(cfg.finetune_epochs):
        idx = list(range(len(examples)))
        order.shuffle(idx)
        for b in range(0, len(idx), cfg.finetune_batch_size):
            batch = [examples[i] for i in idx[b : b + cfg.finetune_batch_size]]
            padded = pad_batch([{"input_ids": e} for e in batch], pad)
            ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)  # (B, T), right-padded
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.advance(len(batch), f"loss {loss.item():.3f}")
    model.eval()


def _sample(model, tokenizer, prompts, seen: set[str], cfg: GenerateConfig, start: int, pad: int, device) -> list[str]:
    import torch

    with torch.no_grad():
        return _sample_loop(model, tokenizer, prompts, seen, cfg, start, pad, device)


def _sample_loop(model, tokenizer, prompts, seen: set[str], cfg: GenerateConfig, start, pad, device) -> list[str]:
    from data.padding import pad_batch

    rng = random.Random(cfg.seed)
    model.eval()
    out: list[str] = []
    drawn = 0
    progress = Progress("transfer.generate: generate", cfg.count, "sentences", PROGRESS_EVERY_S)
    while len(out) < cfg.count and drawn < cfg.count * MAX_DRAWS_PER_SENTENCE:
        batch = [rng.choice(prompts) for _ in range(min(cfg.batch_size, 2 * (cfg.count - len(out))))]
        drawn += len(batch)
        encoded = [[start, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in batch]
        padded = pad_batch([{"input_ids": e} for e in encoded], pad, left=True)
        ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)  # (B, T), left-padded
        width = ids.shape[1]
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            temperature=cfg.temperature,
            min_new_tokens=cfg.min_new_tokens,
            max_new_tokens=cfg.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )  # (B, T + new)
        before = len(out)
        for row, n in zip(generated.tolist(), map(len, encoded)):
            new = row[width:]
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(row[width - n + 1 : width] + new, skip_special_tokens=True)
            text = " ".join(text.split("\n", 1)[0].split())
            if text and "\ufffd" not in text and text not in seen and len(out) < cfg.count:
                seen.add(text)
                out.append(text)
        progress.advance(len(out) - before)
    if len(out) < cfg.count:
        print(f"transfer.generate: {len(out)} of {cfg.count} sentences after {drawn} samples", file=sys.stderr)
    return out
