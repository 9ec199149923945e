"""Every bad config value stops with one `UserError` line naming its dotted key, whether it comes from a YAML file, a
`section.key=value` override or the Python API (the dataclass constructors). No training: these run in milliseconds."""

from __future__ import annotations

import pytest

from bert.errors import UserError
from data.config import DataConfig
from helper.config import (
    DistillationRunConfig,
    DistillConfig,
    FinetuneConfig,
    InitFromConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    StudentConfig,
    StudentSpec,
    TrainerConfig,
    TransferSetConfig,
    load_config,
)

F, D, T = FinetuneConfig, DistillationRunConfig, TransferSetConfig
BIG = "100000000000000000000"  # 10**20: beyond int64

# (config class, overrides, the dotted key the message must name, a fragment of the rule it must state)
OVERRIDES = [
    # optim
    (F, ["optim.lr=-1e-4"], "optim.lr", "-0.0001 must be a finite number > 0"),
    (F, ["optim.lr=0"], "optim.lr", "> 0"),
    (F, ["optim.lr=.nan"], "optim.lr", "nan must be a finite number"),
    (F, ["optim.lr=.inf"], "optim.lr", "inf must be a finite number"),
    (F, ["optim.lr=nan"], "optim.lr", "nan must be a finite number"),  # YAML 1.1 string, read as a float
    (F, ["optim.lr=fast"], "optim.lr", "expected float, got 'fast'"),
    (F, ["optim.weight_decay=-0.01"], "optim.weight_decay", ">= 0"),
    (F, ["optim.weight_decay=.inf"], "optim.weight_decay", ">= 0"),
    (F, ["optim.momentum=1"], "optim.momentum", "in [0, 1)"),
    (F, ["optim.momentum=-0.5"], "optim.momentum", "in [0, 1)"),
    (F, ["optim.warmup_ratio=2"], "optim.warmup_ratio", "2.0 must be a finite number in [0, 1)"),
    (F, ["optim.warmup_ratio=1.0"], "optim.warmup_ratio", "in [0, 1)"),
    (F, ["optim.warmup_ratio=-0.1"], "optim.warmup_ratio", "in [0, 1)"),
    (F, ["optim.name=lamb"], "optim.name", "not one of adamw, adam, sgd"),
    (F, ["optim.betas=[0.9]"], "optim.betas", "two numbers in [0, 1)"),
    (F, ["optim.betas=[0.9, 1.0]"], "optim.betas", "two numbers in [0, 1)"),
    (F, ["optim.betas=[-0.1, 0.999]"], "optim.betas", "two numbers in [0, 1)"),
    (F, ["optim.betas=[0.9, .nan]"], "optim.betas", "two numbers in [0, 1)"),
    (F, ["optim.betas=0.9"], "optim.betas", "expected a list"),
    (F, ["optim.betas=[a, b]"], "optim.betas[0]", "expected float"),
    (F, ["optim.eps=0"], "optim.eps", "a finite number > 0"),
    (F, ["optim.eps=-1e-8"], "optim.eps", "> 0"),
    (F, ["optim.eps=.inf"], "optim.eps", "> 0"),
    (F, ["optim.warmup_epochs=0"], "optim.warmup_epochs", "None or a finite number > 0"),
    (F, ["optim.warmup_epochs=-1"], "optim.warmup_epochs", "> 0"),
    (F, ["optim.warmup_epochs=.nan"], "optim.warmup_epochs", "> 0"),
    (F, ["optim.warmup_epochs=1"], "optim.warmup_epochs", "1 with optim.warmup_ratio 0.1: warm up by one of them"),
    (F, ["optim.warmup_epochs=1", "optim.warmup_ratio=0.2"], "optim.warmup_epochs", "set optim.warmup_ratio=0"),
    # data
    (F, ["data.batch_size=0"], "data.batch_size", "0 must be an integer in [1, 2147483647]"),
    (F, ["data.batch_size=-8"], "data.batch_size", "in [1, 2147483647]"),
    (F, ["data.batch_size=2.5"], "data.batch_size", "expected int"),
    (F, ["data.eval_batch_size=0"], "data.eval_batch_size", "None or an integer in [1, 2147483647]"),
    (F, ["data.max_length=0"], "data.max_length", "an integer in [2, 2147483647]"),
    (F, ["data.max_length=1"], "data.max_length", "an integer in [2, 2147483647]"),
    (F, ["data.limit_train=0"], "data.limit_train", "None or an integer in [1, 2147483647]"),
    (F, ["data.limit_eval=-1"], "data.limit_eval", "None or an integer in [1, 2147483647]"),
    (F, ["data.num_workers=-1"], "data.num_workers", "in [0, 2147483647]"),
    (F, ["data.val_from_train=0"], "data.val_from_train", "in (0, 1)"),
    (F, ["data.val_from_train=1"], "data.val_from_train", "in (0, 1)"),
    (F, ["data.val_from_train=.nan"], "data.val_from_train", "in (0, 1)"),
    (F, ["data.seed=-1"], "data.seed", "in [0, 4294967295]"),
    (F, ["data.encoding=utf-99"], "data.encoding", "a text encoding"),
    (F, ["data.label_names=[pos]"], "data.label_names", "at least 2 distinct"),
    (F, ["data.label_names=[a, a]"], "data.label_names", "at least 2 distinct"),
    (F, ["data.hf_splits={dev: validation}"], "data.hf_splits", "train/validation/test"),
    (F, ["data.train='  '"], "data.train", "non-empty one-line string"),
    (F, ["data.text_column="], "data.text_column", "expected str, got None"),
    (F, ["data.source=parquet"], "data.source", "not one of"),
    # trainer
    (F, ["trainer.max_epochs=0"], "trainer.max_epochs", "-1 or an integer in [1, 2147483647]"),
    (F, ["trainer.max_epochs=-1"], "trainer.max_epochs", "needs trainer.max_steps >= 1"),
    (F, ["trainer.max_steps=0"], "trainer.max_steps", "-1 or an integer in [1, 2147483647]"),
    (F, ["trainer.max_steps=-5"], "trainer.max_steps", "-1 or an integer in [1, 2147483647]"),
    (F, ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", "in [1, 2147483647]"),
    (F, ["trainer.gradient_clip_val=0"], "trainer.gradient_clip_val", "None or a finite number > 0"),
    (F, ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", "> 0"),
    (F, ["trainer.gradient_clip_val=.inf"], "trainer.gradient_clip_val", "> 0"),
    (F, ["trainer.grad_norm_type=0"], "trainer.grad_norm_type", "inf or a finite number > 0"),
    (F, ["trainer.grad_norm_type=-2"], "trainer.grad_norm_type", "> 0"),
    (F, ["trainer.grad_norm_type=.nan"], "trainer.grad_norm_type", "> 0"),
    (F, ["trainer.grad_norm_type=-.inf"], "trainer.grad_norm_type", "> 0"),
    (F, ["trainer.grad_norm_type=l2"], "trainer.grad_norm_type", "expected float"),
    (F, ["trainer.deterministic=maybe"], "trainer.deterministic", "expected bool"),
    (F, ["trainer.num_nodes=0"], "trainer.num_nodes", "in [1, 2147483647]"),
    (F, ["trainer.val_check_interval=0"], "trainer.val_check_interval", "a fraction in (0, 1] or a whole number"),
    (F, ["trainer.val_check_interval=1.5"], "trainer.val_check_interval", "(0, 1]"),
    (F, ["trainer.val_check_interval=-2"], "trainer.val_check_interval", "(0, 1]"),
    (F, ["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches", "(0, 1]"),
    (F, ["trainer.limit_val_batches=.nan"], "trainer.limit_val_batches", "(0, 1]"),
    (F, ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", "in [1, 2147483647]"),
    (F, ["trainer.early_stopping_patience=0"], "trainer.early_stopping_patience", "None or an integer in [1, "),
    (F, ["trainer.seed=-1"], "trainer.seed", "in [0, 4294967295]"),
    (F, ["trainer.devices=0"], "trainer.devices", "a count in [1, 2147483647]"),
    (F, ["trainer.devices=[]"], "trainer.devices", "distinct device ids"),
    (F, ["trainer.devices=[0, 0]"], "trainer.devices", "distinct device ids"),
    (F, ["trainer.precision=16-mixed", "trainer.accelerator=cpu"], "trainer.precision", "on cpu use bf16-mixed"),
    (F, ["trainer.precision=fp16"], "trainer.precision", "not one of"),
    (F, ["trainer.monitor=val/auc"], "trainer.monitor", "not one of"),
    (F, ["trainer.metrics=[accuracy, auc]"], "trainer.metrics", "distinct names among"),
    # model / teacher / student
    (F, ["model.dropout=1"], "model.dropout", "None or a finite number in [0, 1)"),
    (F, ["model.dropout=-0.1"], "model.dropout", "in [0, 1)"),
    (F, ["model.name=''"], "model.name", "non-empty"),
    (D, ["teacher.dropout=.nan"], "teacher.dropout", "in [0, 1)"),  # named where it is, not `model.`
    (D, ["student.dropout=1.5"], "student.dropout", "in [0, 1)"),
    (D, ["student.init_from_teacher.layers=[]"], "student.init_from_teacher.layers", "a non-empty list"),
    (D, ["student.init_from_teacher.layers=[1, 1]"], "student.init_from_teacher.layers", "distinct"),
    (D, ["student.init_from_teacher.layers=[-1]"], "student.init_from_teacher.layers", ">= 0"),
    (D, ["student.init_from_teacher.layers=[a]"], "student.init_from_teacher.layers[0]", "expected int"),
    (D, ["student.init_from_teacher.layers=3"], "student.init_from_teacher.layers", "expected a list"),
    (D, ["student.init_from_teacher=null"], "student", "set exactly one of name, config, init_from_teacher, bilstm"),
    (D, ["student.name=x", "student.config={}"], "student", "(got name, config); set the others to null"),
    (D, ["students=[{key: a}]"], "students[0]", "set exactly one of name, config, init_from_teacher, bilstm"),
    (D, ["students=[{key: a, name: x, adaptors: [{weight: 1}]}]"], "students[0].adaptors[0]", "`name:` key"),
    # distill
    (D, ["distill.temperature=0"], "distill.temperature", "a finite number > 0"),
    (D, ["distill.temperature=-2"], "distill.temperature", "> 0"),
    (D, ["distill.temperature=.inf"], "distill.temperature", "> 0"),
    (D, ["distill.cache_max_mb=-1"], "distill.cache_max_mb", ">= 0"),
    (D, ["distill.cache_max_mb=.nan"], "distill.cache_max_mb", ">= 0"),
    (D, ["distill.report_batches=0"], "distill.report_batches", "an integer in [1, 2147483647]"),
    (D, ["distill.adaptors=[]"], "distill.adaptors", "a non-empty list"),
    (D, ["distill.adaptors=[{weight: 1}]"], "distill.adaptors[0]", "a mapping with a `name:` key"),
    (D, ["distill.adaptors=[AttnMiniLM, {name: LogitKL, temperature: 0}]"], "distill.adaptors[1].temperature", "> 0"),
    (D, ["distill.adaptors=[{name: LogitKL, weight: .nan}]"], "distill.adaptors[0].weight", ">= 0"),
    # logger
    (F, ["logger.run_name=a/b"], "logger.run_name", "a directory name"),
    (F, ["logger.run_name=.."], "logger.run_name", "a directory name"),
    (F, ["logger.output_dir="], "logger.output_dir", "expected str, got None"),
    (F, ["logger.loggers=[neptune]"], "logger.loggers[0]", "not one of wandb, csv, tensorboard, mlflow, comet"),
    (F, ["logger.loggers=[]"], "logger.loggers", "a non-empty list of distinct logger names"),
    (F, ["logger.loggers=[csv, csv]"], "logger.loggers", "distinct"),
    (F, ["logger.loggers=csv"], "logger.loggers", "expected a list"),
    (F, ["logger.wandb=false"], "logger.wandb", "unknown key"),
    # keys
    (F, ["trainer.max_epoch=3"], "trainer.max_epoch", "unknown key"),
    (D, ["student.init_from_teacher.layer=[1]"], "student.init_from_teacher.layer", "unknown key"),
    (F, ["data=0", "data.source=csv"], "data", "0 is not a section (override 'data.source=csv')"),
    # upper bounds: 10**20 passed, trained one step, then crashed in itertools.islice (> sys.maxsize)
    (F, [f"data.batch_size={BIG}"], "data.batch_size", "in [1, 2147483647]"),
    (F, [f"data.eval_batch_size={BIG}"], "data.eval_batch_size", "in [1, 2147483647]"),
    (F, [f"data.limit_train={BIG}"], "data.limit_train", "in [1, 2147483647]"),
    (F, [f"data.max_length={BIG}"], "data.max_length", "in [2, 2147483647]"),
    (F, ["trainer.max_steps=9223372036854775808"], "trainer.max_steps", "-1 or an integer in [1, 2147483647]"),
    (F, [f"trainer.max_epochs={BIG}"], "trainer.max_epochs", "in [1, 2147483647]"),
    (F, [f"trainer.limit_train_batches={BIG}"], "trainer.limit_train_batches", "batches in [1, 2147483647]"),
    (F, [f"trainer.devices=[{BIG}]"], "trainer.devices", "device ids"),
    (D, [f"distill.report_batches={BIG}"], "distill.report_batches", "in [1, 2147483647]"),
    (T, [f"transfer.batch_size={BIG}"], "transfer.batch_size", "in [1, 2147483647]"),
    (T, [f"transfer.augment.n_iter={BIG}"], "transfer.augment.n_iter", "in [1, 2147483647]"),
    (T, [f"transfer.generate.count={BIG}"], "transfer.generate.count", "in [1, 2147483647]"),
    (T, [f"transfer.generate.batch_size={BIG}"], "transfer.generate.batch_size", "in [1, 2147483647]"),
    (F, ["logger.run_name=" + "a" * 256], "logger.run_name", "at most 255 UTF-8 bytes"),
    # found by tests/test_config_fuzz.py: an int beyond the float range was an OverflowError, not a refusal
    (F, ["data.batch_size=1" + "0" * 400], "data.batch_size", "in [1, 2147483647]"),
    (F, ["optim.lr=1" + "0" * 400], "optim.lr", "expected float, got 1000"),
    (F, ["data.batch_size=" + "1" * 5000], "data.batch_size", "expected int, got '111"),  # YAML: over 4300 digits
    (F, ["data.encoding=rot13"], "data.encoding", "a text encoding"),  # bytes-to-bytes: open() refuses it
    (F, ['data.encoding="utf-8\\0"'], "data.encoding", "a text encoding"),  # was a ValueError (embedded null)
    (F, ['model.name="a\\u2028b"'], "model.name", "one-line string"),  # a line break for str.splitlines
    (F, ['logger.run_name="\\ud800"'], "logger.run_name", "a directory name"),  # was a UnicodeEncodeError
    (F, ['data.train="\\ud800"'], "data.train", "non-empty one-line string"),  # a lone surrogate: no path holds one
    (D, ["student.config={null: 2}"], "student.config.None", "expected str, got None"),  # keys are fitted too
]


def _one_line_naming(err: pytest.ExceptionInfo, key: str, fragment: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{key}:" in msg or f"'{key}'" in msg, msg
    assert fragment in msg, msg
    return msg


@pytest.mark.parametrize(
    "cls, overrides, key, fragment", OVERRIDES, ids=[" ".join(case[1])[:80] for case in OVERRIDES]
)  # fmt: skip
def test_bad_override(cls, overrides, key, fragment):
    with pytest.raises(UserError) as err:
        load_config(cls, None, overrides)
    msg = _one_line_naming(err, key, fragment)
    assert msg.startswith("<defaults> (with overrides): ")


YAML = [
    ("optim:\n  lr: .nan\n", "optim.lr", "nan must be a finite number > 0"),
    ("optim:\n  lr: -.inf\n", "optim.lr", "-inf must be a finite number > 0"),
    ("data:\n  val_from_train: .inf\n", "data.val_from_train", "in (0, 1)"),
    ("data:\n  max_length: 0\n", "data.max_length", "in [2, 2147483647]"),
    ("trainer:\n  gradient_clip_val: .NaN\n", "trainer.gradient_clip_val", "> 0"),
    ("trainer:\n  max_epochs: -1\n  max_steps: -1\n", "trainer.max_epochs", "needs trainer.max_steps >= 1"),
]


def test_yaml_int_over_4300_digits_is_one_line(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("data:\n  batch_size: " + "1" * 5000 + "\n")
    with pytest.raises(UserError, match="invalid YAML") as err:
        load_config(FinetuneConfig, path, [])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, key, fragment", YAML, ids=[case[0].replace("\n", " ") for case in YAML])
def test_bad_yaml_names_the_file(tmp_path, text, key, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_config(FinetuneConfig, path, [])
    assert _one_line_naming(err, key, fragment).startswith(f"{path}: ")


NAN, INF = float("nan"), float("inf")
CONSTRUCTED = [
    (lambda: OptimConfig(lr=-1), "optim.lr: -1.0 must be a finite number > 0"),
    (lambda: OptimConfig(warmup_ratio=2), "optim.warmup_ratio: 2.0 must be a finite number in [0, 1)"),
    (lambda: OptimConfig(lr=True), "optim.lr: expected float, got True"),
    (lambda: DataConfig(batch_size=0), "data.batch_size: 0 must be an integer in [1, 2147483647]"),
    (lambda: DataConfig(batch_size="32"), "data.batch_size: expected int, got '32'"),
    (lambda: DataConfig(max_length=0), "data.max_length: 0 must be an integer in [2, 2147483647]"),
    (lambda: TrainerConfig(accelerator="cpu", precision="16-mixed"), "trainer.precision: '16-mixed' needs a CUDA"),
    (lambda: TrainerConfig(max_epochs=-1), "trainer.max_epochs: -1 (no epoch limit) needs trainer.max_steps >= 1"),
    (lambda: TrainerConfig(limit_train_batches=0), "trainer.limit_train_batches: 0 must be a fraction in (0, 1]"),
    (lambda: InitFromConfig(layers=[]), "student.init_from_teacher.layers: [] must be a non-empty list"),
    (lambda: ModelConfig(dropout=NAN), "model.dropout: nan must be None or a finite number in [0, 1)"),
    (lambda: StudentConfig(dropout=2), "student.dropout: 2.0 must be None or a finite number in [0, 1)"),
    (lambda: StudentConfig(), "student: set exactly one of name, config, init_from_teacher, bilstm (got none); set"),
    (
        lambda: StudentConfig(name="x", config={}),
        "student: set exactly one of name, config, init_from_teacher, bilstm (got",
    ),
    (lambda: StudentSpec(key="a"), "students[]: set exactly one of name, config, init_from_teacher, bilstm (got none)"),
    (lambda: DistillConfig(temperature=INF), "distill.temperature: inf must be a finite number > 0"),
    (lambda: LoggerConfig(run_name="../x"), "logger.run_name: '../x' must be None or a directory name"),
]


@pytest.mark.parametrize("build, expected", CONSTRUCTED, ids=[c[1].split(":")[0] for c in CONSTRUCTED])
def test_python_api_gives_the_same_error(build, expected):
    with pytest.raises(UserError) as err:
        build()
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, constructed",
    [
        ("optim.lr=-1", lambda: OptimConfig(lr=-1)),
        ("data.batch_size=0", lambda: DataConfig(batch_size=0)),
        ("trainer.max_steps=0", lambda: TrainerConfig(max_steps=0)),
    ],
)
def test_loader_message_is_the_constructor_message_plus_the_source(override, constructed):
    with pytest.raises(UserError) as from_api:
        constructed()
    with pytest.raises(UserError) as from_yaml:
        load_config(FinetuneConfig, None, [override])
    assert str(from_yaml.value) == f"<defaults> (with overrides): {from_api.value}"
