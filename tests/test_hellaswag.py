"""dev/data/hellaswag.py: rendering to the eval file, and the Python reference scoring."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmc.config import GPT2Config
from llmc.formats import EvalExample, read_eval_file, write_model

REPO_ROOT = Path(__file__).resolve().parent.parent

RECORDS: list[dict[str, Any]] = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "split": "val",
        "split_type": "zeroshot",
        "label": 3,
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
    },
    {
        "ctx": "Two women are sitting on a couch. they",
        "label": 0,
        "endings": ["are talking.", "fly away.", "are 10 feet tall.", "melt <|endoftext|>."],
    },
]


@pytest.fixture
def hellaswag(dev_data_modules: Path) -> Any:
    import hellaswag

    return hellaswag


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "dev" / "data" / "hellaswag.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_render_to_eval_file(gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path) -> None:
    src = tmp_path / "hs.jsonl"
    write_jsonl(src, RECORDS)
    out_dir = tmp_path / "out"
    proc = run_script(
        "--input", src, "--output-dir", out_dir, "--tokenizer-dir", gpt2_tokenizer_dir
    )
    assert proc.returncode == 0, proc.stderr
    examples = read_eval_file(out_dir / "hellaswag_val.bin", vocab_size=50257)
    assert len(examples) == len(RECORDS)
    for i, (ex, record) in enumerate(zip(examples, RECORDS)):
        assert ex.index == i
        assert ex.label == record["label"]
        assert ex.context == gpt2_encoding.encode_ordinary(record["ctx"])
        assert ex.completions == [
            gpt2_encoding.encode_ordinary(" " + ending) for ending in record["endings"]
        ]
    assert 50256 not in examples[2].completions[3]  # special-token text is plain text

    proc = run_script(
        "--input",
        src,
        "--output-dir",
        out_dir,
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
        "--limit",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_eval_file(out_dir / "hellaswag_val.bin")) == 2


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"ctx": "a", "endings": ["b", "c"], "label": 2}, "label"),
        ({"ctx": "a", "endings": [], "label": 0}, "endings"),
        ({"endings": ["b"], "label": 0}, "ctx"),
    ],
)
def test_bad_jsonl(hellaswag: Any, tmp_path: Path, record: dict[str, Any], match: str) -> None:
    src = tmp_path / "bad.jsonl"
    write_jsonl(src, [RECORDS[0], record])
    with pytest.raises(ValueError, match=match) as info:
        hellaswag.read_jsonl(str(src))
    assert f"{src}:2" in str(info.value)
    proc = run_script("--input", src, "--output-dir", tmp_path / "out")
    assert proc.returncode != 0
    assert f"{src}:2" in proc.stderr


# ----------------------------------------------------------------------------------------------
# scoring

V = 8  # vocabulary of the synthetic tests
FAVOURITE = 3


def favourite_logits(tokens: np.ndarray) -> np.ndarray:
    """Predicts token 3 everywhere; padded vocabulary columns get huge logits to be ignored."""
    N, T = tokens.shape
    logits = np.zeros((N, T, V + 2), dtype=np.float32)
    logits[:, :, FAVOURITE] = 20.0
    logits[:, :, V:] = 100.0
    return logits


def test_known_answers(hellaswag: Any) -> None:
    examples = [
        # all of 3s wins both ways: right
        EvalExample(0, 1, [1, 2], [[5, 5], [3, 3], [3, 6], [7]]),
        # the model picks completion 2: wrong both ways
        EvalExample(1, 0, [1], [[4], [5], [3]]),
        # total loss favours the short [6] (1 miss), average the long one (2 misses in 6): only
        # acc_norm is right
        EvalExample(2, 0, [1], [[3, 3, 3, 3, 6, 6], [6]]),
    ]
    result = hellaswag.evaluate(examples, favourite_logits, vocab_size=V)
    assert result.predictions == [1, 2, 1]
    assert result.predictions_norm == [1, 2, 0]
    assert (result.num_correct, result.num_correct_norm) == (1, 2)
    assert result.acc == pytest.approx(1 / 3)
    assert result.acc_norm == pytest.approx(2 / 3)

    # the losses themselves, with the softmax over the first V logits only
    totals, averages = hellaswag.completion_losses(examples[2], favourite_logits, V)
    hit = math.log(math.exp(20.0) + (V - 1)) - 20.0
    miss = math.log(math.exp(20.0) + (V - 1))
    np.testing.assert_allclose(totals, [4 * hit + 2 * miss, miss], rtol=1e-6)
    np.testing.assert_allclose(averages, [(4 * hit + 2 * miss) / 6, miss], rtol=1e-6)


def successor_logits(tokens: np.ndarray) -> np.ndarray:
    """Predicts (token + 1) % V after each token: checks the one-position shift."""
    N, T = tokens.shape
    logits = np.zeros((N, T, V), dtype=np.float32)
    rows, cols = np.meshgrid(np.arange(N), np.arange(T), indexing="ij")
    logits[rows, cols, (tokens + 1) % V] = 10.0
    return logits


def test_predictions_use_the_previous_position(hellaswag: Any) -> None:
    # after context [1, 2], the continuation [3, 4] is right; [2, 3] is one step off
    example = EvalExample(0, 1, [1, 2], [[2, 3], [3, 4], [4, 5]])
    result = hellaswag.evaluate([example], successor_logits, vocab_size=V)
    assert result.predictions == [1]
    assert result.predictions_norm == [1]


def test_matches_brute_force(hellaswag: Any) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, V + 3)).astype(np.float32)  # bigram logits, padded columns

    def bigram_logits(tokens: np.ndarray) -> np.ndarray:
        return table[tokens]

    examples = []
    for i in range(30):
        context = rng.integers(0, V, rng.integers(1, 6)).tolist()
        completions = [rng.integers(0, V, rng.integers(1, 5)).tolist() for _ in range(4)]
        examples.append(EvalExample(i, int(rng.integers(0, 4)), context, completions))
    result = hellaswag.evaluate(examples, bigram_logits, vocab_size=V)

    correct = correct_norm = 0
    for ex in examples:
        totals, averages = [], []
        for completion in ex.completions:
            seq = ex.context + completion
            loss = 0.0
            for pos in range(len(ex.context), len(seq)):
                row = [float(v) for v in table[seq[pos - 1], :V]]
                log_z = math.log(sum(math.exp(v) for v in row))
                loss += log_z - row[seq[pos]]
            totals.append(loss)
            averages.append(loss / len(completion))
        correct += int(int(np.argmin(totals)) == ex.label)
        correct_norm += int(int(np.argmin(averages)) == ex.label)
    assert (result.num_correct, result.num_correct_norm) == (correct, correct_norm)


def test_bad_logits_shape(hellaswag: Any) -> None:
    example = EvalExample(0, 0, [1], [[2], [3]])
    with pytest.raises(ValueError, match="shape"):
        hellaswag.evaluate([example], lambda t: np.zeros((2, 1, V)), vocab_size=V)


def test_cli_scores_a_model(
    hellaswag: Any, gpt2_tokenizer_dir: Path, gpt2_encoding: Any, tmp_path: Path
) -> None:
    reference = pytest.importorskip("llmc.reference", reason="llmc.reference (torch) unavailable")
    config = GPT2Config(max_seq_len=64, num_layers=1, num_heads=2, channels=16)
    rng = np.random.default_rng(3)
    params = {
        name: (0.5 * rng.standard_normal(shape)).astype(np.float32)
        for name, shape in config.parameter_shapes().items()
    }
    model_path = tmp_path / "model.bin"
    write_model(model_path, config, params)
    src = tmp_path / "hs.jsonl"
    write_jsonl(src, RECORDS)
    proc = run_script(
        "--input",
        src,
        "--output-dir",
        tmp_path / "out",
        "--tokenizer-dir",
        gpt2_tokenizer_dir,
        "--model",
        model_path,
    )
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"acc ([0-9.]+) \((\d+)\), acc_norm ([0-9.]+) \((\d+)\)", proc.stdout)
    assert found, proc.stdout

    # the same model scored in process, with an explicit forward of the reference model
    import torch

    model = reference.GPT2.from_checkpoint(str(model_path))
    examples = [hellaswag.render_example(gpt2_encoding, i, r) for i, r in enumerate(RECORDS)]

    def logits_fn(tokens: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(tokens).long())
        return logits.numpy()

    result = hellaswag.evaluate(examples, logits_fn, vocab_size=config.vocab_size)
    assert int(found.group(2)) == result.num_correct
    assert int(found.group(4)) == result.num_correct_norm
