"""Export a classifier directory (any run's `student` or `model`) to ONNX fp32 and int8 beside it, in `<dir>_onnx/`.

    python export_onnx.py --model runs/distill_ms/student [--texts dev.txt]

`<dir>_onnx/` holds model.onnx (fp32; dynamic batch and sequence axes), model_int8.onnx (dynamically quantised) with
the config and tokenizer; `predict.py --backend onnx|onnx-int8` serves them. Both are checked against the PyTorch model
on the first 64 texts of --texts (a plain file or .jsonl/.csv/.tsv, like predict.py's input), else on random token
ids: a max |logit difference| above the tolerance (docs/serving.md) stops with one line and writes nothing. Needs
onnx and onnxruntime (requirements.txt). Bad input stops with `error: <one line>` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from bert.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported classifier directory")
    p.add_argument("--texts", help="texts to check the export on (default: random token ids)")
    p.add_argument("--text-column", default="text", help="text column of .jsonl/.csv/.tsv --texts (default text)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per checked text (default 64)")
    args = p.parse_args(argv)
    try:
        from helper.serving import run_export

        run_export(args.model, args.texts, args.text_column, args.max_length)
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
