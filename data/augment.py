"""d-lite transfer-set augmentation (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", arXiv:1903.12136, §3.3): masking, POS-guided word replacement and n-gram sampling.

For each training sentence `n_iter` samples are drawn. Per word one uniform draw x decides (the two operations are
mutually exclusive, as in the paper): x < p_mask replaces the word by the mask token; p_mask <= x < p_mask + p_pos
replaces it by a word drawn from the training text's unigram distribution re-normalised to the word's POS tag (which
may draw the same word); otherwise the word is kept. Then, with probability p_ng, the sample is cut to a random n-gram,
n uniform in 1..ngram_max (the whole sample when n is not shorter). Sentence pairs cycle, as in the paper, through
augmenting the first side only, the second side only, and both sides (sample t of a pair: t % 3).

Words are whitespace tokens (`str.split()`): punctuation attached to a word stays with it, so pre-tokenized text (such
as SST-2's) works best; augmented sides are joined with single spaces. Samples that change nothing, and samples equal
to another sample or to any original (compared with whitespace normalised), are dropped.

Every sentence has its own generator, `random.Random(f"{seed}:{index}")` (string seeds hash with SHA-512, not with
Python's salted `hash`): the output is the same on every run and under any PYTHONHASHSEED, and a sentence's samples
depend on its position in the input, not on the other sentences.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from bert.errors import UserError
from bert.sections import AT_LEAST_1, PROBABILITY, SEED, Section

Tagger = Callable[[list[str]], list[str]]  # words -> one POS tag per word
OPS = ("mask", "pos", "ngram")
NO_TAGGER = (
    "transfer: no POS tagger installed (pip install textblob: its Pattern tagger ships inside the wheel); "
    "POS replacement is off"
)


@dataclass(frozen=True)
class AugmentConfig(Section):
    """Settings of Tang et al. (2019) §3.3; their defaults: n_iter 20, p_mask 0.1, p_pos 0.1, p_ng 0.25, n <= 5."""

    SECTION = "transfer.augment"
    RULES = {
        "n_iter": AT_LEAST_1,
        "p_mask": PROBABILITY,
        "p_pos": PROBABILITY,
        "p_ng": PROBABILITY,
        "ngram_max": AT_LEAST_1,
        "seed": SEED,
    }

    n_iter: int = 20  # samples drawn per training sentence (before duplicates are dropped)
    p_mask: float = 0.1  # per word: replace by the mask token
    p_pos: float = 0.1  # per word: replace by a training word of the same POS tag
    p_ng: float = 0.25  # per sample: keep only a random n-gram
    ngram_max: int = 5  # n is uniform in 1..ngram_max
    seed: int = 0  # each sentence draws from random.Random(f"{seed}:{index}")

    def check(self) -> None:
        if self.p_mask + self.p_pos > 1:
            self.fail(
                "p_pos",
                f"p_mask + p_pos = {self.p_mask} + {self.p_pos} exceeds 1 (one draw per word picks masking or POS "
                "replacement)",
            )


class Augmented(NamedTuple):
    """One synthetic example. `op` is what changed it: "ngram" if the n-gram cut dropped words, else "pos" if a POS
    replacement put in a different word, else "mask" (for pairs, over both sides)."""

    text: str
    pair: str | None
    op: Literal["mask", "pos", "ngram"]


def load_pos_tagger() -> Tagger | None:
    """TextBlob's English tagger (Pattern's Brill-style lexicon and contextual rules, Penn Treebank tags; the data
    ships inside the textblob wheel, so it works offline), or None when textblob is not installed."""
    try:
        from textblob.en import parser
    except ImportError:
        return None

    def tag(words: list[str]) -> list[str]:
        return [t for _, t in parser.find_tags(list(words))]

    return tag


class _Unigram:
    """Words seen with one POS tag and their counts; draws follow the counts."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, word: str):
        self.counts[word] = self.counts.get(word, 0) + 1

    def freeze(self):
        self.words = list(self.counts)  # first-seen order: deterministic for a given input
        self.cum = []
        total = 0
        for w in self.words:
            total += self.counts[w]
            self.cum.append(total)

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.words, cum_weights=self.cum)[0]


def augment(
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    cfg: AugmentConfig | None = None,
    mask_token: str = "[MASK]",
    tagger: Tagger | Literal["auto"] | None = "auto",
) -> list[Augmented]:
    """Synthetic examples from `texts` (and `pairs`) per Tang et al. (2019) §3.3, in input order, originals excluded.

    `mask_token`: the student's tokenizer's (`tokenizer.mask_token`). `tagger`: a callable giving one POS tag per
    word; "auto" loads `load_pos_tagger()` when `cfg.p_pos > 0` and prints one line to stderr if there is none;
    None turns POS replacement off (the words it would have replaced are kept).
    """
    cfg = cfg or AugmentConfig()
    if pairs is not None and len(pairs) != len(texts):
        raise UserError(f"transfer: {len(texts)} texts but {len(pairs)} pairs")
    if cfg.p_pos == 0:
        tagger = None
    elif tagger == "auto":
        tagger = load_pos_tagger()
        if tagger is None:
            print(NO_TAGGER, file=sys.stderr)

    sides = [texts] if pairs is None else [texts, pairs]
    words = [[t.split() for t in side] for side in sides]  # [side][sentence] -> words
    tags = None
    vocab: dict[str, _Unigram] = {}
    if tagger is not None:
        tags = [[_tag(tagger, w) for w in side] for side in words]
        for side_words, side_tags in zip(words, tags):
            for ws, ts in zip(side_words, side_tags):
                for w, t in zip(ws, ts):
                    vocab.setdefault(t, _Unigram()).add(w)
        for unigram in vocab.values():
            unigram.freeze()

    seen = {tuple(" ".join(w) for w in example) for example in zip(*words)}  # originals, whitespace normalised
    rows = []
    for i, originals in enumerate(zip(*sides)):
        rng = random.Random(f"{cfg.seed}:{i}")
        for t in range(cfg.n_iter):
            # single sentences: side 0 always; pairs: first only, second only, both (Tang et al. §3.3)
            chosen = (0,) if pairs is None else ((0,), (1,), (0, 1))[t % 3]
            out = list(originals)
            key = [" ".join(words[s][i]) for s in range(len(sides))]
            ops: set[str] = set()
            for s in chosen:
                sample, side_ops = _sample(words[s][i], tags[s][i] if tags else None, vocab, cfg, mask_token, rng)
                out[s] = key[s] = " ".join(sample)
                ops |= side_ops
            if not ops or tuple(key) in seen:
                continue
            seen.add(tuple(key))
            op = next(o for o in reversed(OPS) if o in ops)  # priority: ngram, pos, mask
            rows.append(Augmented(out[0], out[1] if pairs is not None else None, op))
    return rows


def _sample(
    words: list[str],
    tags: list[str] | None,
    vocab: dict[str, _Unigram],
    cfg: AugmentConfig,
    mask_token: str,
    rng: random.Random,
) -> tuple[list[str], set[str]]:
    """One augmented copy of `words` and the operations that changed it."""
    out = list(words)
    ops = set()
    for j, word in enumerate(words):
        x = rng.random()
        if x < cfg.p_mask:
            out[j] = mask_token
        elif x < cfg.p_mask + cfg.p_pos and tags is not None:
            out[j] = vocab[tags[j]].draw(rng)
            if out[j] != word:
                ops.add("pos")
        if out[j] == mask_token and word != mask_token:
            ops.add("mask")
    if rng.random() < cfg.p_ng:
        n = rng.randint(1, cfg.ngram_max)
        if n < len(out):
            start = rng.randrange(len(out) - n + 1)
            out = out[start : start + n]
            ops.add("ngram")
    return out, ops


def _tag(tagger: Tagger, words: list[str]) -> list[str]:
    tags = list(tagger(words))
    if len(tags) != len(words):
        raise UserError(f"transfer: the POS tagger gave {len(tags)} tags for the {len(words)} words of {words!r}")
    return tags
