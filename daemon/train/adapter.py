"""Adapter: a query-side adapter on the serving embedder, so a promotion needs no re-index.

The candidate is built from sentence-transformers' own modules:

    Transformer -> Pooling -> Normalize -> Router(query: [Dense d->d, Normalize], document: [])

Documents take the "document" route, which adds nothing: their vectors are exactly the serving embedder's,
so the index stays as it is and promoting the candidate only rewrites the manifest (the same seconds for
1k or 10M chunks). Queries take the "query" route through the Dense adapter. Production encodes with
`encode_query` / `encode_document`; a plain `encode` takes the document route, i.e. behaves as the
serving embedder did. The transformer is stored once (both routes share it), not twice.

Training. Only the Dense layer learns; everything below it is frozen, so its inputs are fixed vectors:
each query's vector through the document route, and the corpus vectors the embedding cache already holds
for the serving model (daemon/models/vectors.py). The adapter is therefore trained on those cached vectors with
the loss the full fine-tune uses, MultipleNegativesRankingLoss (cosine x 20, cross-entropy over the batch's
answers plus each example's hard negatives), written out here in a few lines of torch because
sentence-transformers' trainer would push every document through the frozen transformer at every step.
It takes seconds whatever the corpus size, and encodes no corpus chunk. A Dense initialized to the
identity reproduces the serving model exactly; a serving adapter is continued from its own weights.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import structlog

from daemon.models.encoding import encode_documents
from daemon.train.dataset import TrainingData

log = structlog.get_logger(__name__)
SCALE = 20.0  # MultipleNegativesRankingLoss's default: cosine similarities x 20


def _router_class():
    from sentence_transformers.sentence_transformer.modules import Router

    return Router


def query_adapter(model):
    """The Dense adapter of a model built here, or None for a plain embedder."""
    for module in model:
        if isinstance(module, _router_class()) and "query" in module.sub_modules:
            return module.sub_modules["query"][0]
    return None


def document_modules(model) -> list:
    """The modules that make a document vector: everything before the Router, ending in Normalize."""
    from sentence_transformers.sentence_transformer.modules import Normalize

    mods = []
    for module in model:
        if isinstance(module, _router_class()):
            break
        mods.append(module)
    return mods if isinstance(mods[-1], Normalize) else mods + [Normalize()]


def identity_dense(dim: int):
    """A d->d Dense layer that changes nothing: the serving model, exactly."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    dense = Dense(dim, dim, bias=True, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.eye(dim))
        dense.linear.bias.zero_()
    return dense


def build(serving, dense):
    """The candidate: ``serving``'s document side, plus ``dense`` on the query route."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    router = _router_class()({"query": [dense, Normalize()], "document": []}, default_route="document")
    return SentenceTransformer(modules=[*document_modules(serving), router], device=str(serving.device))


def start_dense(serving, continue_serving: bool):
    """The adapter training starts from: the serving adapter's weights (a copy), or the identity."""
    import copy

    current = query_adapter(serving)
    if continue_serving and current is not None:
        return copy.deepcopy(current)
    return identity_dense(serving.get_embedding_dimension())


def fit_adapter(serving, data: TrainingData, doc_vectors: dict[str, np.ndarray], cfg, seed: int,
                continue_serving: bool = True):
    """Train a query adapter for ``serving`` on ``data``, with the cached ``doc_vectors`` (by chunk id) of at
    least every chunk the examples name; with cfg.adapter_candidates "corpus", of the corpus they rank against.

    Returns (the candidate model, a trainer-like state with global_step and log_history)."""
    import torch

    t0 = time.monotonic()
    torch.manual_seed(seed)
    examples = data.examples
    n_neg = min([len(e.negative_ids) for e in examples] + [cfg.negatives])
    q_in = torch.from_numpy(encode_documents(serving, [e.query for e in examples]))
    pos_ids = [e.positive_id for e in examples]
    pos = torch.from_numpy(np.stack([doc_vectors[c] for c in pos_ids]))
    neg = torch.from_numpy(np.stack([np.stack([doc_vectors[c] for c in e.negative_ids[:n_neg]])
                                     if n_neg else np.zeros((0, pos.shape[1]), np.float32) for e in examples]))
    corpus, target, mask = (_corpus_candidates(examples, doc_vectors, seed) if cfg.adapter_candidates == "corpus"
                            else (None, None, None))
    dense = start_dense(serving, continue_serving).to("cpu")
    linear = dense.linear
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    opt = torch.optim.AdamW(linear.parameters(), lr=cfg.adapter_learning_rate, weight_decay=0.0)
    history, step = [], 0
    for _ in range(cfg.adapter_epochs):
        order = torch.randperm(len(examples))
        for start in range(0, len(examples), cfg.adapter_batch_size):
            batch = order[start:start + cfg.adapter_batch_size]
            if corpus is not None:
                loss = _corpus_loss(linear, q_in[batch], corpus, target[batch], mask[batch])
            else:
                loss = _batch_loss(linear, q_in[batch], pos[batch], neg[batch], [pos_ids[i] for i in batch.tolist()],
                                   [examples[i].negative_ids[:n_neg] for i in batch.tolist()])
            if cfg.adapter_identity_decay:
                loss = loss + cfg.adapter_identity_decay * ((linear.weight - w0).pow(2).sum()
                                                            + (linear.bias - b0).pow(2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            history.append({"step": step, "loss": round(loss.item(), 4)})
    runtime = time.monotonic() - t0
    history.append({"train_runtime": round(runtime, 3)})
    log.info("train.adapter", examples=len(examples), negatives=n_neg, steps=step, seconds=round(runtime, 2),
             final_loss=history[-2]["loss"] if step else None)
    return build(serving, dense.to(serving.device)), SimpleNamespace(global_step=step, log_history=history)


MAX_CANDIDATES = 65_536


def _corpus_candidates(examples, doc_vectors: dict[str, np.ndarray], seed: int):
    """(candidate vectors, each example's answer row, mask of its other answers): every chunk the examples name,
    plus the rest of ``doc_vectors`` up to MAX_CANDIDATES (a fixed random sample beyond that)."""
    import random

    import torch

    named = list(dict.fromkeys(c for e in examples for c in (e.positive_id, *e.negative_ids)))
    rest = [c for c in doc_vectors if c not in set(named)]
    if len(named) + len(rest) > MAX_CANDIDATES:
        rest = random.Random(seed).sample(rest, max(0, MAX_CANDIDATES - len(named)))
    ids = named + rest
    row = {c: i for i, c in enumerate(ids)}
    answers: dict[str, set[int]] = {}
    for e in examples:
        answers.setdefault(e.query, set()).add(row[e.positive_id])
    target = torch.tensor([row[e.positive_id] for e in examples])
    mask = torch.zeros(len(examples), len(ids), dtype=torch.bool)
    for i, e in enumerate(examples):
        mask[i, list(answers[e.query] - {row[e.positive_id]})] = True
    return torch.from_numpy(np.stack([doc_vectors[c] for c in ids])), target, mask


def _corpus_loss(linear, q, corpus, target, mask):
    """The retrieval objective: cross-entropy of each query's answer against every candidate chunk."""
    import torch.nn.functional as F

    scores = SCALE * F.normalize(linear(q), dim=-1) @ corpus.T
    return F.cross_entropy(scores.masked_fill(mask, float("-inf")), target)


def _batch_loss(linear, q, pos, neg, pos_ids: list[str], neg_ids: list[list[str]]):
    """MultipleNegativesRankingLoss for one batch: each query against every answer and hard negative in the
    batch. A candidate that is the query's own answer chunk at another place (two queries, one answer) is
    masked, as the trainer's NO_DUPLICATES sampler keeps such rows out of one batch."""
    import torch
    import torch.nn.functional as F

    b, d = pos.shape
    cands = torch.cat([pos, neg.reshape(-1, d)])
    cand_ids = pos_ids + [c for ids in neg_ids for c in ids]
    scores = SCALE * F.normalize(linear(q), dim=-1) @ cands.T
    same = torch.tensor([[c == p for c in cand_ids] for p in pos_ids])
    same[torch.arange(b), torch.arange(b)] = False
    scores = scores.masked_fill(same, float("-inf"))
    return F.cross_entropy(scores, torch.arange(b))


def describe(serving_label: str, documents_version: int) -> dict[str, Any]:
    """What training.json records of an adapter: the model whose document vectors it reuses."""
    return {"mode": "adapter", "documents": documents_version, "adapter_on": serving_label}
