"""HellaSwag: render the validation set as an eval file, and score a model on it.

Each example is a context and 4 candidate endings; a model picks the ending it finds most likely.
Rendering (as llm.c): context tokens = encode(ctx), ending tokens = encode(" " + ending). The
eval file (hellaswag_val.bin) is what the C/CUDA trainers read to report HellaSwag during
training; `evaluate()` is the Python reference of the same scoring:

- acc: the ending with the lowest total cross-entropy over its tokens wins;
- acc_norm: the ending with the lowest average cross-entropy (total / its length) wins; this is
  the number llm.c reports.

    python dev/data/hellaswag.py --input hellaswag_val.jsonl            # write the eval file
    python dev/data/hellaswag.py --model gpt2_124M.bin --limit 500        # ... and score a model
"""

from __future__ import annotations

import argparse
import os
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from data_common import add_tokenizer_argument, read_jsonl_objects, write_evalfile

from llmc.config import GPT2_VOCAB_SIZE
from llmc.formats import EvalExample, atomic_write, read_model_header
from llmc.tokenizer import get_encoding

URLS = {
    split: f"https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
    for split in ("train", "val", "test")
}
DEFAULT_OUTPUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")

LogitsFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------
# reading and rendering


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """HellaSwag records of a jsonl file: each needs ctx (str), endings (list of str), label."""
    records = []
    for lineno, record in read_jsonl_objects(path):
        ctx, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
        if not isinstance(ctx, str):
            raise ValueError(f"{path}:{lineno}: 'ctx' must be a string")
        if (
            not isinstance(endings, list)
            or not endings
            or not all(isinstance(e, str) for e in endings)
        ):
            raise ValueError(f"{path}:{lineno}: 'endings' must be a non-empty list of strings")
        if not isinstance(label, int) or not 0 <= label < len(endings):
            raise ValueError(
                f"{path}:{lineno}: 'label' must be an integer in [0, {len(endings)}), got {label!r}"
            )
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no examples")
    return records


def render_example(enc: Any, index: int, record: dict[str, Any]) -> EvalExample:
    """Tokens of one example: encode(ctx) and encode(" " + ending) for each ending."""
    return EvalExample(
        index=index,
        label=int(record["label"]),
        context=enc.encode_ordinary(record["ctx"]),
        completions=[enc.encode_ordinary(" " + ending) for ending in record["endings"]],
    )


def download(split: str, output_dir: str) -> str:
    """Download one split's jsonl into output_dir (once); returns its path."""
    path = os.path.join(output_dir, f"hellaswag_{split}.jsonl")
    if not os.path.exists(path):
        print(f"downloading {URLS[split]} to {path}")
        with urllib.request.urlopen(URLS[split], timeout=60) as response, atomic_write(path) as f:
            f.write(response.read())
    return path


# ----------------------------------------------------------------------------------------------
# scoring (the Python reference)


@dataclass
class EvalResult:
    """Scores over a set of examples; predictions are completion indices."""

    num_examples: int
    num_correct: int
    num_correct_norm: int
    predictions: list[int]
    predictions_norm: list[int]

    @property
    def acc(self) -> float:
        return self.num_correct / self.num_examples

    @property
    def acc_norm(self) -> float:
        return self.num_correct_norm / self.num_examples


def completion_losses(
    example: EvalExample, logits_fn: LogitsFn, vocab_size: int = GPT2_VOCAB_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Total and average cross-entropy of each completion given the context.

    Rows are context + completion, right-padded with token 0 to the longest row, and go to
    `logits_fn(tokens: (N, T) int32) -> (N, T, Vp) float32` in one batch. Only the first
    `vocab_size` logits take part in the softmax (padded vocabulary rows are never predicted).
    """
    n = len(example.completions)
    ctx_len = len(example.context)
    width = max(ctx_len + len(c) for c in example.completions)
    tokens = np.zeros((n, width), dtype=np.int32)
    for i, completion in enumerate(example.completions):
        row = example.context + completion
        tokens[i, : len(row)] = row
    logits = np.asarray(logits_fn(tokens), dtype=np.float64)
    if logits.ndim != 3 or logits.shape[:2] != (n, width) or logits.shape[2] < vocab_size:
        raise ValueError(
            f"logits_fn returned shape {logits.shape}, expected ({n}, {width}, >= {vocab_size})"
        )
    logits = logits[:, :, :vocab_size]
    # log-softmax, numerically stable
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    totals = np.zeros(n)
    for i, completion in enumerate(example.completions):
        # completion token j sits at position ctx_len + j and is predicted at position - 1
        positions = np.arange(ctx_len - 1, ctx_len - 1 + len(completion))
        totals[i] = -logprobs[i, positions, completion].sum()
    lengths = np.array([len(c) for c in example.completions], dtype=np.float64)
    return totals, totals / lengths


def evaluate(
    examples: Sequence[EvalExample],
    logits_fn: LogitsFn,
    vocab_size: int = GPT2_VOCAB_SIZE,
    progress: bool = False,
) -> EvalResult:
    """Score examples: the completion with the lowest cross-entropy wins (total for acc,
    average over its tokens for acc_norm); ties go to the lower completion index."""
    if not examples:
        raise ValueError("evaluate: no examples")
    result = EvalResult(len(examples), 0, 0, [], [])
    for i, example in enumerate(examples):
        totals, averages = completion_losses(example, logits_fn, vocab_size)
        pred, pred_norm = int(np.argmin(totals)), int(np.argmin(averages))
        result.predictions.append(pred)
        result.predictions_norm.append(pred_norm)
        result.num_correct += int(pred == example.label)
        result.num_correct_norm += int(pred_norm == example.label)
        if progress:
            print(
                f"{i + 1} examples: acc {result.num_correct / (i + 1):.4f} "
                f"acc_norm {result.num_correct_norm / (i + 1):.4f}"
            )
    return result


def model_logits_fn(model_path: str, device: str = "cpu") -> tuple[LogitsFn, int]:
    """(logits_fn, vocab_size) of a model file, run with the PyTorch reference model."""
    import torch

    from llmc.reference import GPT2

    config, _ = read_model_header(model_path)
    model = GPT2.from_checkpoint(model_path).to(device)
    model.eval()

    def logits_fn(tokens: np.ndarray) -> np.ndarray:
        if tokens.shape[1] > config.max_seq_len:
            raise ValueError(
                f"{model_path}: example of {tokens.shape[1]} tokens exceeds the model's "
                f"maxT {config.max_seq_len}"
            )
        with torch.no_grad():
            out = model(torch.from_numpy(tokens).long().to(device))
        logits = out[0] if isinstance(out, tuple) else out
        return logits.float().cpu().numpy()

    return logits_fn, config.vocab_size


# ----------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        help="local HellaSwag jsonl (one object per line: ctx, endings, label; other fields "
        "such as ctx_a, ctx_b, activity_label are ignored) instead of downloading",
    )
    parser.add_argument(
        "--split", choices=sorted(URLS), default="val", help="split to download and name files by"
    )
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="where to write")
    add_tokenizer_argument(parser)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N examples")
    parser.add_argument("--model", help="model .bin to score with the PyTorch reference")
    parser.add_argument("--device", default="cpu", help="torch device for --model")
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if args.input and not os.path.isfile(args.input):
        parser.error(f"--input {args.input}: no such file")
    if args.model and not os.path.isfile(args.model):
        parser.error(f"--model {args.model}: no such file")

    os.makedirs(args.output_dir, exist_ok=True)
    jsonl = args.input if args.input else download(args.split, args.output_dir)
    try:
        records = read_jsonl(jsonl)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if args.limit:
        records = records[: args.limit]
    enc = get_encoding(args.tokenizer_dir)
    examples = [render_example(enc, i, record) for i, record in enumerate(records)]
    write_evalfile(os.path.join(args.output_dir, f"hellaswag_{args.split}.bin"), examples)

    if args.model:
        logits_fn, vocab_size = model_logits_fn(args.model, args.device)
        result = evaluate(examples, logits_fn, vocab_size)
        print(
            f"{args.model}: {result.num_examples} examples, acc {result.acc:.4f} "
            f"({result.num_correct}), acc_norm {result.acc_norm:.4f} ({result.num_correct_norm})"
        )


if __name__ == "__main__":
    main()
