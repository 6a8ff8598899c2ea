"""The embedding example on the real model: batched calls agree with single ones, and it serves through runqy local.

Needs the ``embed`` extra (CI installs it); skipped where it is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runner_params import CLEAN_ENV

pytest.importorskip("onnxruntime", reason="the embed extra is not installed: pip install -e '.[embed]'")
np = pytest.importorskip("numpy")

from runqy.examples.embed import DIMENSIONS, Embedder  # noqa: E402 - only once the extra is known to be there

TEXTS = [
    "A worker takes tasks from the queue.",
    "Hi.",
    "The quick brown fox jumps over the lazy dog, again and again, until the batch is full.",
    "Ünïcödé and CAPS are lower-cased by the BERT normaliser.",
    "word " * 400,  # cut at 256 word pieces
    *[f"Sentence number {n} about vectors and search." for n in range(27)],
]


@pytest.fixture(scope="module")
def model() -> Embedder:
    return Embedder()


def test_batched_and_single_embeddings_agree_and_are_unit_vectors(model: Embedder) -> None:
    batched = model.embed(TEXTS)
    single = np.stack([model.embed([text])[0] for text in TEXTS])
    assert batched.shape == (len(TEXTS), DIMENSIONS) and batched.dtype == np.float32
    assert np.abs(batched - single).max() <= 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    related, unrelated = batched[5] @ batched[6], batched[5] @ batched[1]
    assert related > unrelated, "two sentences about vectors are closer than one of them and 'Hi.'"


@pytest.mark.timeout(120)
def test_served_through_runqy_local_answers_each_text_with_its_embedding(tmp_path: Path, model: Embedder) -> None:
    payloads = [*({"text": text} for text in TEXTS), 42]
    lines = [{"task_id": f"t{n}", "payload": payload} for n, payload in enumerate(payloads)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runqy",
            "local",
            "runqy.examples.embed",
            "--input",
            "texts.jsonl",
            "--concurrency",
            "32",
        ],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        cwd=tmp_path,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    responses = {r["task_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert len(responses) == len(lines)
    bad = responses.pop(f"t{len(TEXTS)}")
    assert 'expected a text, or {"text": "..."}; got int' in bad["error"]
    expected = model.embed(TEXTS)
    got = np.array([responses[f"t{n}"]["result"] for n in range(len(TEXTS))], dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-5
