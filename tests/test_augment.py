"""d-lite augmentation (Tang et al. 2019, arXiv:1903.12136, §3.3): exact seeded outputs of each operation, pairs,
duplicates, determinism, config errors and the missing-tagger path."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from bert.errors import UserError
from data.augment import NO_TAGGER, AugmentConfig, Augmented, _Unigram, augment, load_pos_tagger
from tests.conftest import ROOT

TEXTS = ["the film is good", "a movie was dull", "the plot is a mess"]
TAGS = {
    "the": "DT",
    "a": "DT",
    "film": "NN",
    "movie": "NN",
    "plot": "NN",
    "mess": "NN",
    "is": "VBZ",
    "was": "VBD",
    "good": "JJ",
    "dull": "JJ",
}


def fake_tagger(words: list[str]) -> list[str]:
    return [TAGS[w] for w in words]


def cfg(**kw) -> AugmentConfig:
    base = dict(n_iter=3, p_mask=0.0, p_pos=0.0, p_ng=0.0)
    base.update(kw)
    return AugmentConfig(**base)


def texts_of(rows: list[Augmented]) -> list[str]:
    assert all(r.pair is None for r in rows)
    return [r.text for r in rows]


def test_defaults_are_the_papers():
    assert AugmentConfig() == AugmentConfig(n_iter=20, p_mask=0.1, p_pos=0.1, p_ng=0.25, ngram_max=5, seed=0)


def test_mask_all_words():
    rows = augment(TEXTS, cfg=cfg(p_mask=1.0), tagger=None)
    # sentences 1 and 2 have four words: their all-mask samples are one and the same, kept once
    assert rows == [
        Augmented("[MASK] [MASK] [MASK] [MASK]", None, "mask"),
        Augmented("[MASK] [MASK] [MASK] [MASK] [MASK]", None, "mask"),
    ]


def test_mask_half_seeded():
    rows = augment(TEXTS, cfg=cfg(p_mask=0.5), tagger=None)
    assert texts_of(rows) == [
        "the film is [MASK]",
        "[MASK] film [MASK] [MASK]",
        "[MASK] [MASK] is good",
        "[MASK] [MASK] was dull",
        "[MASK] movie [MASK] [MASK]",
        "[MASK] [MASK] was [MASK]",
        "[MASK] [MASK] is [MASK] [MASK]",
        "[MASK] [MASK] is [MASK] mess",
        "the plot [MASK] [MASK] [MASK]",
    ]
    assert {r.op for r in rows} == {"mask"}


def test_mask_token_is_the_tokenizers(tokenizer):
    rows = augment(["a gorgeous , witty film"], cfg=cfg(p_mask=0.5, n_iter=5), mask_token=tokenizer.mask_token)
    for row in rows:
        ids = tokenizer(row.text)["input_ids"]
        assert ids.count(tokenizer.mask_token_id) == row.text.split().count(tokenizer.mask_token) > 0


def test_pos_replacement_with_fake_tagger():
    rows = augment(TEXTS, cfg=cfg(p_pos=1.0), tagger=fake_tagger)
    assert texts_of(rows) == [
        "a film is good",
        "the plot is dull",
        "the plot was good",
        "the mess was dull",
        "a mess was good",
        "the movie is the film",
        "a movie is the mess",
        "the movie is a movie",
    ]
    assert {r.op for r in rows} == {"pos"}
    originals = [fake_tagger(t.split()) for t in TEXTS]
    for row in rows:  # every word replaced by one of its tag
        assert fake_tagger(row.text.split()) in originals


def test_pos_draws_follow_training_counts():
    """The unigram distribution re-normalised to the tag (Tang et al. §3.3): draws follow the training counts."""
    unigram = _Unigram()
    for word in ["good"] * 9 + ["dull"]:
        unigram.add(word)
    unigram.freeze()
    rng = random.Random(0)
    draws = Counter(unigram.draw(rng) for _ in range(2000))
    assert set(draws) == {"good", "dull"} and 0.87 < draws["good"] / 2000 < 0.93


def test_ngram_only():
    rows = augment(TEXTS, cfg=cfg(p_ng=1.0, ngram_max=2, n_iter=4), tagger=None)
    assert texts_of(rows) == ["is", "the film", "the", "dull", "a movie", "movie", "the plot", "is a", "mess"]
    assert {r.op for r in rows} == {"ngram"}


def test_all_operations_and_op_priority():
    rows = augment(TEXTS, cfg=cfg(p_mask=0.3, p_pos=0.3, p_ng=0.3, seed=1), tagger=fake_tagger)
    assert rows == [
        Augmented("the movie is [MASK]", None, "pos"),
        Augmented("[MASK] mess is good", None, "pos"),
        Augmented("a", None, "ngram"),
        Augmented("a movie [MASK] dull", None, "mask"),
        Augmented("[MASK] [MASK] was good", None, "pos"),
        Augmented("[MASK] film was [MASK]", None, "pos"),
        Augmented("[MASK] [MASK] is a [MASK]", None, "mask"),
        Augmented("[MASK] [MASK] [MASK] a [MASK]", None, "mask"),
        Augmented("the mess is [MASK] mess", None, "pos"),
    ]


def test_pairs_cycle_first_second_both():
    rows = augment(["good film", "dull"], pairs=["a hit", "a miss"], cfg=cfg(p_mask=1.0), tagger=None)
    assert rows == [
        Augmented("[MASK] [MASK]", "a hit", "mask"),
        Augmented("good film", "[MASK] [MASK]", "mask"),
        Augmented("[MASK] [MASK]", "[MASK] [MASK]", "mask"),
        Augmented("[MASK]", "a miss", "mask"),
        Augmented("dull", "[MASK] [MASK]", "mask"),
        Augmented("[MASK]", "[MASK] [MASK]", "mask"),
    ]


def test_pairs_all_operations_on_both_sides():
    rows = augment(TEXTS, pairs=TEXTS[::-1], cfg=cfg(p_mask=0.2, p_pos=0.3, p_ng=0.3, n_iter=6), tagger=fake_tagger)
    assert len(rows) == len(set(rows)) > 0
    originals = set(zip(TEXTS, TEXTS[::-1]))
    assert not {(r.text, r.pair) for r in rows} & originals
    assert any(r.text not in TEXTS for r in rows) and any(r.pair not in TEXTS for r in rows)


def test_pair_length_mismatch():
    with pytest.raises(UserError, match="2 texts but 1 pairs"):
        augment(["a", "b"], pairs=["c"], cfg=cfg(p_mask=1.0))


def test_duplicates_and_originals_dropped():
    # every 1-gram of "good film" is drawn many times; "good" is also an original; "  good film " is unchanged
    rows = augment(["good film", "good", "  good   film "], cfg=cfg(p_ng=1.0, ngram_max=1, n_iter=50), tagger=None)
    assert rows == [Augmented("film", None, "ngram")]
    assert augment(TEXTS, cfg=cfg(n_iter=20), tagger=None) == []  # nothing applies: every sample is an original


def test_deterministic_and_seeded():
    c = AugmentConfig(p_mask=0.2, p_pos=0.2, p_ng=0.3, n_iter=10)
    first = augment(TEXTS, cfg=c, tagger=fake_tagger)
    assert first == augment(TEXTS, cfg=c, tagger=fake_tagger)
    reseeded = AugmentConfig(p_mask=0.2, p_pos=0.2, p_ng=0.3, n_iter=10, seed=1)
    assert first != augment(TEXTS, cfg=reseeded, tagger=fake_tagger)
    # a sentence's samples depend on its position, not on the other sentences (mask only: no shared vocabulary)
    mask = cfg(p_mask=0.5)
    other = augment(["x y z w v"] + TEXTS[1:], cfg=mask, tagger=None)
    assert other[-6:] == augment(TEXTS, cfg=mask, tagger=None)[-6:]


def test_same_output_under_any_hash_seed():
    # data/augment.py loaded by its path: the data package's __init__ imports lightning (seconds)
    code = """if True:
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("augment_alone", "data/augment.py")
        aug = sys.modules["augment_alone"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(aug)
        texts = ["the film is good", "a movie was dull", "the plot is a mess"] * 2
        cfg = aug.AugmentConfig(p_pos=0.5, p_ng=0.5)
        print(json.dumps(aug.augment(texts, cfg=cfg, tagger=lambda ws: [w[-1] for w in ws])))
    """
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1] and len(outs[0]) > 10


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(p_mask=1.5), "transfer.augment.p_mask: 1.5 must be a finite number in [0, 1]"),
        (dict(p_pos=-0.1), "transfer.augment.p_pos: -0.1 must be a finite number in [0, 1]"),
        (dict(p_ng=float("nan")), "transfer.augment.p_ng: nan must be a finite number in [0, 1]"),
        (dict(p_ng="often"), "transfer.augment.p_ng: expected float, got 'often'"),
        (dict(p_ng=True), "transfer.augment.p_ng: expected float, got True"),
        (dict(n_iter=0), "transfer.augment.n_iter: 0 must be an integer in [1, 2147483647]"),
        (dict(n_iter=2.0), "transfer.augment.n_iter: expected int, got 2.0"),
        (dict(ngram_max=0), "transfer.augment.ngram_max: 0 must be an integer in [1, 2147483647]"),
        (dict(seed=None), "transfer.augment.seed: expected int, got None"),
        (dict(p_mask=0.6, p_pos=0.6), "transfer.augment.p_pos: p_mask + p_pos = 0.6 + 0.6 exceeds 1"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(UserError) as err:
        AugmentConfig(**kw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_tagger_giving_wrong_count():
    with pytest.raises(UserError, match="gave 1 tags for the 4 words"):
        augment(TEXTS, cfg=cfg(p_pos=0.5), tagger=lambda ws: ["NN"])


def test_missing_tagger(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "textblob", None)  # import textblob -> ImportError
    monkeypatch.setitem(sys.modules, "textblob.en", None)
    assert load_pos_tagger() is None
    c = cfg(p_mask=0.3, p_pos=0.3)
    rows = augment(TEXTS, cfg=c)
    assert capsys.readouterr().err == NO_TAGGER + "\n"
    assert rows == augment(TEXTS, cfg=c, tagger=None) and rows
    augment(TEXTS, cfg=cfg(p_mask=0.3))  # p_pos 0: no tagger wanted, nothing said
    assert capsys.readouterr().err == ""


def test_textblob_tagger():
    pytest.importorskip("textblob")
    tag = load_pos_tagger()
    assert tag("a gorgeous , witty film".split()) == ["DT", "JJ", ",", "JJ", "NN"]
    assert tag([]) == []
    rows = augment(["a gorgeous , witty film", "a dull , tedious mess"], cfg=cfg(p_pos=1.0, n_iter=20))
    adjectives, nouns = {"gorgeous", "witty", "dull", "tedious"}, {"film", "mess"}
    assert len(rows) > 10
    for row in rows:  # adjectives swap with adjectives, nouns with nouns
        a, adj1, comma, adj2, noun = row.text.split()
        assert (a, comma) == ("a", ",") and {adj1, adj2} <= adjectives and noun in nouns
