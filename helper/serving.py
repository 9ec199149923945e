"""The classifier as served: ONNX fp32 and dynamically quantised int8 ONNX exports of an exported (Hugging Face)
classifier directory, written with its config and tokenizer to `<dir>_onnx/`, each checked against the PyTorch model;
`OnnxClassifier` runs them with ONNX Runtime like a PyTorch model, so that the one batched inference loop
(`helper/inference.py`), predict.py and the report serve them unchanged.

Exporter: `torch.onnx.export(..., dynamo=False)` (the TorchScript tracer), opset 17, dynamic batch and sequence axes.
On the 2-layer MiniLM student it exports in 1.3 s against 16.8 s for `dynamo=True`, with the same logits (max
difference to PyTorch 3e-8 against 5e-8) and the same ONNX Runtime speed. Quantiser: onnxruntime's
`quantize_dynamic` (int8 weights, per output channel; activations quantised at run time, so no calibration data), which
also stores the word-embedding table in int8 (`Gather`): 62.5 MB -> 15.8 MB for that student. docs/serving.md has the
measurements.

onnx and onnxruntime are imported only here, when asked for; without them the export is one line naming the install.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from bert.errors import UserError
from bert.families import MODEL_INPUTS, accepted_inputs, logits_of
from data.padding import pad_batch
from helper.inference import forward_batches, load_model, tokenized_batches

ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}  # backend -> file in the ONNX directory
BACKENDS = ("torch", *ONNX_FILES)
INSTALL = "pip install onnx onnxruntime"
OPSET = 17
CHECK_ROWS = 64  # validation rows the exports are checked on
# fp32: ONNX Runtime runs the same float32 arithmetic in another order: 3e-8 to 1.3e-6 measured on 2-layer MiniLM
# students, 1e-8 on the tiny test models; a wrong graph (a dropped mask, a missing layer, other weights) moves logits
# by 0.01 and more.
FP32_TOL = 1e-4
# int8: weights rounded to 1/127 of each output channel's range and activations to 1/255 of each call's range move
# each logit by up to 0.005-0.009 on untrained heads (the tiny test models, a student cut from the pretrained model:
# logits of 0.02-0.05) and, on the trained SST-2 student (largest |logit| 2.7), by 0.04 on average and at most 0.25
# over 64 validation rows, 0.57 over the 1,821 test rows (21%: activation outliers; docs/serving.md). A broken
# quantisation (other weights, a wrong scale, a dropped layer) moves them by the logits' own size or more. Tolerance:
# 25% of the largest |fp32 logit|, at least 0.05. Labels only flip on rows whose two top logits are closer than twice
# the difference (most rows of an untrained head), so agreement is reported, not required.
INT8_REL_TOL, INT8_MIN_TOL = 0.25, 0.05


def onnx_dir(model_dir: str | Path) -> Path:
    """Where the ONNX exports of an HF directory go: `<dir>_onnx` beside it."""
    model_dir = Path(model_dir)
    return model_dir.with_name(f"{model_dir.name}_onnx")


def served_dir(model: str | Path, backend: str) -> Path:
    """The ONNX directory for `--model`: the directory itself when it holds the backend's file, else `<dir>_onnx`."""
    for candidate in (Path(model), onnx_dir(model)):
        if (candidate / ONNX_FILES[backend]).is_file():
            return candidate
    raise UserError(
        f"--backend {backend}: no {ONNX_FILES[backend]} in {model} or {onnx_dir(model)}; export it first: "
        f"python export_onnx.py --model {model}"
    )


def onnx_available() -> bool:
    """Whether onnx and onnxruntime import."""
    try:
        import onnx  # noqa: F401  (the exporter writes with it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_served(model: str | Path, backend: str) -> tuple[OnnxClassifier, object]:
    """(`OnnxClassifier` of `backend`, its tokenizer) for `--model` (`served_dir`)."""
    from bert.loading import load_tokenizer

    directory = served_dir(model, backend)
    return OnnxClassifier(directory, backend), load_tokenizer(str(directory))


def require_onnxruntime(what: str):
    """The onnxruntime module; a one-line `UserError` naming the install when onnx or onnxruntime is missing."""
    if not onnx_available():
        raise UserError(f"{what}: onnx and onnxruntime are not installed ({INSTALL})")
    import onnxruntime

    return onnxruntime


class OnnxClassifier(nn.Module):
    """An ONNX classifier run by ONNX Runtime on CPU and called like the PyTorch one: `forward(input_ids,
    attention_mask, token_type_ids)` gives (B, C) float32 logits. `config` is the exported config.json; it has no
    parameters. ONNX Runtime uses `threads` intra-op threads (default: torch's number, so both are timed alike)."""

    def __init__(self, directory: str | Path, backend: str = "onnx", threads: int | None = None):
        from bert.loading import load_model_config

        super().__init__()
        ort = require_onnxruntime(f"--backend {backend}")
        self.path = Path(directory) / ONNX_FILES[backend]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for missing or corrupt files
            raise UserError(f"--backend {backend}: cannot load {self.path}: {str(err).splitlines()[0]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = load_model_config(str(directory))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids) if attention_mask is None else attention_mask,
            "token_type_ids": torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids,
        }
        feed = {name: given[name].cpu().numpy() for name in self.input_names}  # each (B, T) int64
        return torch.from_numpy(self.session.run(None, feed)[0])  # (B, C)


class _Logits(nn.Module):
    """What the exporter traces: the model with positional inputs and its (B, C) logits tensor as the output."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(**dict(zip(self.names, inputs))), self.model)


@contextlib.contextmanager
def _quiet():
    """The tracer's and the quantiser's advice (TracerWarnings, 'consider pre-processing') off, and file descriptors 1
    and 2 to /dev/null: the TorchScript exporter prints its whole graph from C++ when an operator fails. Errors are
    raised as before."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in saved:
        os.dup2(null, fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            yield
    finally:
        logging.disable(logging.NOTSET)
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def check_batches(batches: Iterable[Mapping], model: nn.Module, view: str | None = None) -> list[dict]:
    """The first `CHECK_ROWS` rows of `batches` (the inputs of sub-dict `view` where the batches have it), as the
    batches the exports are checked on."""
    out, rows = [], 0
    for batch in batches:
        inputs = batch.get(view, batch) if view else batch
        taken = [k for k in MODEL_INPUTS if k in inputs and k in accepted_inputs(model)]
        out.append({k: inputs[k][: CHECK_ROWS - rows] for k in taken})
        rows += len(out[-1]["input_ids"])
        if rows >= CHECK_ROWS:
            break
    if not out:
        raise UserError("onnx export: no validation rows to check the export on")
    return out


def random_batches(tokenizer, max_length: int = 64, rows: int = CHECK_ROWS, seed: int = 0) -> list[dict]:
    """`rows` sequences of random token ids of random lengths (2 to `max_length`), in padded batches of 16: the check
    rows of an export when no texts are given."""
    generator = torch.Generator().manual_seed(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = torch.randint(2, max_length + 1, (rows,), generator=generator).tolist()
    examples = [{"input_ids": torch.randint(len(tokenizer), (n,), generator=generator)} for n in lengths]
    if "token_type_ids" in tokenizer.model_input_names:  # exported as an input, as the tokenizer will give it
        examples = [{**e, "token_type_ids": torch.zeros_like(e["input_ids"])} for e in examples]
    return [pad_batch(examples[b : b + 16], pad_id) for b in range(0, rows, 16)]


def _trace_example(batches: list[dict]) -> dict[str, torch.Tensor]:
    """The first check row and its first half, padded into one batch: a graph traced on a batch without padding could
    leave the attention mask out."""
    batch = batches[0]
    ids = batch["input_ids"][0]  # (T,)
    keep = batch["attention_mask"][0].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    first = {k: v[0][keep] for k, v in batch.items() if k != "attention_mask"}
    half = {k: v[: max(1, len(v) // 2)] for k, v in first.items()}
    return pad_batch([first, half], 0)


def compare(model: nn.Module, served: nn.Module, batches: list[dict], backend: str) -> dict:
    """Max |logit difference| between `model` (PyTorch) and `served` over `batches`, its tolerance (`FP32_TOL`, or
    for int8 `INT8_REL_TOL` of the largest |fp32 logit|, at least `INT8_MIN_TOL`), argmax agreement and the number of
    rows."""
    cpu = torch.device("cpu")
    ref = torch.cat([logits for _, logits in forward_batches(model, batches, device=cpu)])  # (N, C)
    got = torch.cat([logits for _, logits in forward_batches(served, batches, device=cpu)])  # (N, C)
    diff = float((ref - got).abs().max())
    tolerance = FP32_TOL if backend == "onnx" else max(INT8_REL_TOL * float(ref.abs().max()), INT8_MIN_TOL)
    agreement = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    return {"max_abs_diff": diff, "tolerance": tolerance, "argmax_agreement": agreement, "rows": len(ref)}


def check_parity(model: nn.Module, served: OnnxClassifier, batches: list[dict], backend: str) -> dict:
    """`compare`, and a one-line `UserError` when the difference is above the tolerance (or not finite)."""
    found = compare(model, served, batches, backend)
    if not found["max_abs_diff"] <= found["tolerance"]:
        raise UserError(
            f"onnx export: {served.path.name} does not match the PyTorch model: max |logit difference| "
            f"{found['max_abs_diff']:.3g} over {found['rows']} rows is above the tolerance {found['tolerance']:.3g} "
            f"({100 * found['argmax_agreement']:.1f}% same labels); nothing written"
        )
    return found


def quantize(fp32: Path, int8: Path) -> None:
    """`int8`: the ONNX model `fp32` dynamically quantised (int8 weights per output channel, activations per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)


def export_onnx(model: nn.Module, tokenizer, out_dir: str | Path, batches: list[dict]) -> dict:
    """Write `model` as ONNX fp32 and int8 (`ONNX_FILES`) with its config and tokenizer to `out_dir`, atomically,
    after checking both against `model` on `batches` (`check_parity`). Returns the checks' figures per backend."""
    require_onnxruntime("onnx export")
    from helper.checkpoint import write_dir_atomically

    model = model.to("cpu", torch.float32).eval()
    names = [k for k in MODEL_INPUTS if k in batches[0]]
    example = _trace_example(batches)
    checks: dict[str, dict] = {}

    def write(tmp: Path) -> None:
        fp32, int8 = tmp / ONNX_FILES["onnx"], tmp / ONNX_FILES["onnx-int8"]
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with _quiet(), torch.no_grad():
            try:
                torch.onnx.export(
                    _Logits(model, names).eval(), tuple(example[k] for k in names), str(fp32), input_names=names,
                    output_names=["logits"], opset_version=OPSET, dynamo=False,
                    dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names}, "logits": {0: "batch"}},
                )  # fmt: skip
            except Exception as err:  # the exporter's errors name an operator; one line, not its stack
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"onnx export: {type(model).__name__} does not export to ONNX: {first}") from None
        checks["onnx"] = check_parity(model, OnnxClassifier(tmp, "onnx"), batches, "onnx")  # before quantising it
        quantize(fp32, int8)
        checks["onnx-int8"] = check_parity(model, OnnxClassifier(tmp, "onnx-int8"), batches, "onnx-int8")

    write_dir_atomically(out_dir, write)
    return checks


def export_beside(
    model_dir: str | Path, batches: Iterable[Mapping] | None = None, view: str | None = None, max_length: int = 64
) -> tuple[Path, dict]:
    """Export the classifier of an HF directory to `onnx_dir(model_dir)`, checked on the first rows of `batches` (the
    inputs of their sub-dict `view` where they have it; default: random token ids, `random_batches`); (the ONNX
    directory, the checks' figures)."""
    require_onnxruntime("onnx export")
    model, tokenizer = load_model(str(model_dir))
    batches = batches if batches is not None else random_batches(tokenizer, max_length)
    out = onnx_dir(model_dir)
    checks = export_onnx(model, tokenizer, out, check_batches(batches, model, view))
    return out, checks


def summary(out: Path, checks: dict) -> str:
    """One line: where the exports are, their sizes and check figures."""
    parts = [
        f"{ONNX_FILES[b]} {(out / ONNX_FILES[b]).stat().st_size / 1e6:.1f} MB, max |logit diff| "
        f"{c['max_abs_diff']:.2g} (tolerance {c['tolerance']:.2g}), {100 * c['argmax_agreement']:.1f}% same labels"
        for b, c in checks.items()
    ]
    rows = next(iter(checks.values()))["rows"]
    return f"onnx export -> {out}: {'; '.join(parts)} over {rows} rows"


def run_export(model: str, texts: str | None = None, text_column: str = "text", max_length: int = 64) -> Path:
    """export_onnx.py: export `model` (an HF classifier directory) beside itself, checked on the first rows of the
    `texts` file (read like predict.py's input) or on random token ids; print the summary line."""
    require_onnxruntime("export_onnx.py")
    if max_length < 2:
        raise UserError(f"--max-length must be at least 2, got {max_length}")
    if not Path(model, "config.json").is_file():
        raise UserError(f"--model {model}: not an exported classifier directory (no config.json)")
    import transformers

    from bert.loading import load_tokenizer
    from data.readers import read_column_texts

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    batches = None
    if texts is not None:
        rows = read_column_texts(texts, text_column)[:CHECK_ROWS]
        if not rows:
            raise UserError(f"--texts {texts}: no texts to check the export on")
        batches = tokenized_batches(
            load_tokenizer(model), rows, batch_size=16, max_length=max_length, longest_first=False
        )
    out, checks = export_beside(model, batches, max_length=max_length)
    print(summary(out, checks))
    return out
