"""d-heavy transfer sets (Tang et al. 2019, DeepLo): a tiny GPT-2 with a byte-level BPE tokenizer trained here,
saved to a directory, fine-tuned on a few hundred sentences and sampled."""

from __future__ import annotations

import random

import pytest
import torch

from bert.errors import UserError
from data import generate as gen
from data.generate import GenerateConfig, generate, load_lm

SUBJECTS = ["the movie", "the film", "this story", "the acting", "the plot", "every scene", "the cast", "its script"]
VERBS = ["is", "was", "feels", "seems", "remains", "becomes"]
ADJECTIVES = ["good", "dull", "funny", "tedious", "brilliant", "flat", "moving", "long", "charming", "messy"]
ENDINGS = ["", " and sweet", " , sadly", " from start to finish", " at times", " overall"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = {
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(ADJECTIVES)}{rng.choice(ENDINGS)}" for _ in range(n)
    }
    return sorted(out)


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    return sentences(600)[:300]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, train_texts) -> str:
    """A random 2-layer GPT-2 and a 300-token byte-level BPE trained on the texts, saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # alphabet: the bytes of the texts only (ASCII), so that every token sequence decodes to valid text
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"])
    bpe.train_from_iterator(train_texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def cfg(lm_dir, **kw) -> GenerateConfig:
    base = dict(
        model=lm_dir,
        count=24,
        batch_size=8,
        max_new_tokens=10,
        finetune_epochs=2,
        finetune_lr=3e-3,
        finetune_batch_size=16,
        device="cpu",
    )
    base.update(kw)
    return GenerateConfig(**base)


def test_tokenizer_round_trips(lm_dir, train_texts):
    _, tokenizer = load_lm(lm_dir)
    for text in train_texts[:20]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.slow
def test_finetune_and_generate(lm_dir, train_texts):
    c = cfg(lm_dir)
    first = generate(train_texts, c)
    assert len(first) == c.count == len(set(first))
    prefixes = {" ".join(t.split()[:2]) for t in train_texts}
    for text in first:
        assert isinstance(text, str) and text == text.strip() and text and "\n" not in text and "\ufffd" not in text
        assert text not in train_texts
        assert any(text.startswith(p) for p in prefixes), text
    assert generate(train_texts, c) == first  # seeded: the same on a second run
    assert generate(train_texts, cfg(lm_dir, seed=1)) != first


def test_finetuning_lowers_the_loss(lm_dir, train_texts):
    model, tokenizer = load_lm(lm_dir)
    eos = tokenizer.eos_token_id

    def loss() -> float:
        batch = [[eos, *tokenizer(t, add_special_tokens=False)["input_ids"], eos] for t in train_texts[:32]]
        width = max(map(len, batch))
        ids = torch.tensor([e + [eos] * (width - len(e)) for e in batch])  # (B, T)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in batch])  # (B, T)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.item()

    before = loss()
    torch.manual_seed(0)
    gen.finetune(model, tokenizer, train_texts, cfg(lm_dir), eos, tokenizer.pad_token_id, torch.device("cpu"))
    assert loss() < before - 1.0


def test_prefix_words_and_no_finetune(lm_dir, train_texts):
    c = cfg(lm_dir, prefix_words=3, finetune_epochs=0, count=8, top_k=20, top_p=0.9, temperature=0.8)
    prefixes = {" ".join(t.split()[:3]) for t in train_texts}
    out = generate(train_texts, c)
    assert len(out) == 8 and all(any(t.startswith(p) for p in prefixes) for t in out)


def test_rng_state_untouched(lm_dir, train_texts):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(train_texts, cfg(lm_dir, count=4, finetune_epochs=0))
    assert torch.equal(torch.rand(3), expected)


def test_progress_lines(lm_dir, train_texts, monkeypatch, capsys):
    monkeypatch.setattr(gen, "PROGRESS_EVERY_S", 0.0)
    generate(train_texts[:40], cfg(lm_dir, count=8, finetune_epochs=1))
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("transfer.")
    ]  # no "Loading weights"
    assert lines[0].startswith("transfer.generate: fine-tune 16/40 sentences (40%), ") and "loss " in lines[0]
    assert lines[-1].startswith("transfer.generate: generate 8/8 sentences (100%), ") and "/s, ETA " in lines[-1]


def test_too_few_distinct(lm_dir, train_texts, capsys):
    out = generate(train_texts, cfg(lm_dir, count=12, finetune_epochs=0, max_new_tokens=1, top_k=1))
    assert len(out) <= 8  # top_k 1 is greedy: one continuation for each of the 8 prefixes
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("transfer.")]
    assert lines == [f"transfer.generate: {len(out)} of 12 sentences after 120 samples"]


def test_bad_paths(tmp_path, train_texts):
    for path in (str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(UserError) as err:
            generate(train_texts, GenerateConfig(model=path, count=2))
        message = str(err.value)
        assert (
            message.startswith(f"transfer.generate.model: cannot load {path!r} as a causal LM (")
            and "\n" not in message
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(lm_dir, train_texts):
    with pytest.raises(UserError, match="transfer.generate.device: 'cuda' but torch sees no CUDA device"):
        generate(train_texts, cfg(lm_dir, device="cuda"))


def test_prefix_longer_than_every_sentence(lm_dir):
    with pytest.raises(UserError, match="transfer.generate.prefix_words: no training sentence is longer than 2 words"):
        generate(["too short", "tiny"], cfg(lm_dir))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(count=0), "transfer.generate.count: 0 must be an integer in [1, 2147483647]"),
        (dict(prefix_words=0), "transfer.generate.prefix_words: 0 must be an integer in [1, 2147483647]"),
        (dict(top_k=-1), "transfer.generate.top_k: -1 must be an integer in [0, 2147483647]"),
        (dict(top_p=1.5), "transfer.generate.top_p: 1.5 must be a finite number in (0, 1]"),
        (dict(top_p=0.0), "transfer.generate.top_p: 0.0 must be a finite number in (0, 1]"),
        (dict(temperature=float("inf")), "transfer.generate.temperature: inf must be a finite number > 0"),
        (dict(batch_size=2.5), "transfer.generate.batch_size: expected int, got 2.5"),
        (dict(finetune_epochs=True), "transfer.generate.finetune_epochs: expected int, got True"),
        (dict(min_new_tokens=9, max_new_tokens=8), "transfer.generate.min_new_tokens: 9 exceeds max_new_tokens 8"),
        (dict(model=""), "transfer.generate.model: '' must be a non-empty one-line string"),
        (dict(device="gpu"), "transfer.generate.device: 'gpu' is not a torch device (auto, cpu, cuda, cuda:N, mps)"),
    ],
)
def test_bad_config(kw, message):
    with pytest.raises(UserError) as err:
        GenerateConfig(**kw)
    assert str(err.value) == message
