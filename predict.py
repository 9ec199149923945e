"""Score text with an exported classifier (student or teacher): label id, label name and per-label probabilities.

    python predict.py --model runs/distill_ms/student --input reviews.txt --output scores.csv

The model is any directory or hub name that `AutoModelForSequenceClassification.from_pretrained` loads, with its
tokenizer. Input: one text a line (a plain file or `-` for stdin), or .jsonl / .csv / .tsv with a text column.
Output: one row per input text, in input order: jsonl (default, `-` is stdout), csv or tsv (by extension or
`--format`). Texts are tokenized a chunk at a time, sorted by token length, batched and padded to each batch's
longest, and scored under `torch.inference_mode()` in fp32 (on CUDA when present), or with `--backend onnx` /
`onnx-int8` by the ONNX export (export_onnx.py) in ONNX Runtime on CPU, batched the same way. Bad input stops with
`error: <one line>` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from bert.errors import UserError
from helper.predict import OUTPUT_FORMATS, run_predict
from helper.serving import BACKENDS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (via main), instead of usage + message
        raise UserError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported model directory or hub name")
    p.add_argument("--input", default="-", help="text lines (.txt), .jsonl, .csv or .tsv; '-' = stdin (default)")
    p.add_argument("--output", default="-", help="output file; '-' = stdout (default)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward call (default 64)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text, longer ones truncated (default 512)")
    p.add_argument("--text-column", default="text", help="text column of .jsonl/.csv/.tsv input (default text)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, help="output format (default: by --output extension, jsonl)")
    p.add_argument(
        "--backend", choices=BACKENDS, default="torch", help="torch (default), or the ONNX export in DIR or DIR_onnx "
        "(export_onnx.py): onnx (fp32) or onnx-int8, run by ONNX Runtime on CPU",
    )  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    run_predict(
        args.model, args.input, args.output, batch_size=args.batch_size, max_length=args.max_length,
        text_column=args.text_column, device=args.device, fmt=args.format, backend=args.backend,
    )  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(build_parser().parse_args(argv))
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory; try a smaller --batch-size or --max-length", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `| head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
