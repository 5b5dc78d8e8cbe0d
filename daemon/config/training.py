"""Settings of ``[train]``: mining, the embedder and reranker recipes, weights, devices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from daemon.config.sections import Section


class MiningSettings(Section):
    mine: bool = Field(True, description="true to mine extra hard negatives with the serving embedder over the corpus")
    num_negatives: int = Field(3, ge=1, le=32, description="hard negatives per example (production's first, then mined); 1..32")
    random_negatives: int = Field(1, ge=0, le=32, description="random negatives added per example; 0..32")
    range_min: int = Field(0, ge=0, description="skip this many top-ranked candidates when mining; 0 or more")
    range_max: int = Field(50, ge=1, description="mine among the top range_max candidates; at least 1")
    relative_margin: float = Field(
        0.05, ge=0, lt=1, description="a mined negative must score below positive*(1-margin); 0 disables, below 1"
    )
    max_score: float = Field(
        0.95, gt=0, le=1, description="drop mined candidates above this cosine: likely duplicates of the answer"
    )


class ModelTrainSettings(Section):
    """What the embedder and the reranker jobs share."""

    batch_size: int = Field(16, ge=2, le=4096, description="examples per step; 2..4096")
    epochs: float = Field(1.0, gt=0, description="passes over the data (ignored when max_steps > 0)")
    max_steps: int = Field(0, ge=0, description="stop after this many steps; 0 means use epochs")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="AdamW learning rate, e.g. 2e-5")
    warmup: float = Field(0.1, ge=0, lt=1, description="share of steps spent warming up the learning rate, 0..1")
    max_seq_length: int = Field(256, ge=16, le=8192, description="tokens per input (a text, or a query+chunk pair)")


class EmbedderTrainSettings(ModelTrainSettings):
    base: str = Field(
        "", description='base embedder: a local path or a Hugging Face id; empty means the packaged all-MiniLM-L6-v2'
    )
    start_from: Literal["serving", "base"] = Field(
        "serving", description='"serving" continues from the serving embedder, "base" restarts from train.embedder.base'
    )
    loss: Literal["mnrl", "cached_mnrl"] = Field(
        "mnrl", description='"mnrl" (MultipleNegativesRankingLoss) or "cached_mnrl" (its memory-bounded variant)'
    )
    mini_batch_size: int = Field(
        0, ge=0, description="set > 0 to use CachedMultipleNegativesRankingLoss with this mini-batch size"
    )
    # 3 passes (the usual one-shot recipe) gave a candidate the gate could promote on both benchmarks;
    # 1 pass gained too little to show on the held-out queries of early traffic (docs/research/loop-quality.md).
    epochs: float = Field(3.0, gt=0, description="passes over the data (ignored when max_steps > 0)")
    # One (production's wrong result first): with misses weighted as hits it promotes in the first cycle on
    # both benchmarks, level with four on unseen questions (examples ahead, Perl FAQ 3 questions behind at
    # hit@1), and the examples' cycle takes 348 s instead of 763 s: under the ~10-minute target, which four
    # miss on this CPU (docs/research/training-recipe.md). A GPU deployment can afford 4.
    negatives: int = Field(
        1, ge=0, le=33, description="negatives per embedder example, the first of train.mining's list "
        "(production's, then mined, then random); 4 trains 2-3x slower for no gain shown; 0: in-batch only"
    )
    # Off: carving validation queries out of the train split cost more than early stopping and interpolation
    # gave back, on both benchmarks (docs/research/training-recipe.md).
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the train split's real queries kept out of embedder training to "
        "choose the interpolation alpha and the epoch on (never held-out queries); 0 trains on all of them"
    )
    min_validation: int = Field(
        10, ge=1, description="fewer validation queries than this: nothing is kept out, alpha is 1 and every epoch runs"
    )
    alphas: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0],
        description="interpolations with the model training started from (WiSE-FT: alpha*new + (1-alpha)*start) "
        "tried on the validation queries; the best is saved. [1.0] keeps the fine-tune as it is",
    )
    early_stopping: bool = Field(
        True, description="score the validation queries after every epoch; stop when an epoch scores lower, and "
        "keep the best epoch's weights"
    )
    # On: the gate holds out up to half of early traffic, so without a refit what serves learned from about half
    # of what a hand-run one-shot fine-tune learns from. Measured through the CLI on a held-back benchmark (10
    # Debian FAQs, 257 unseen questions): unseen hit@1 0.541 without the refit, 0.603 with it, 0.564 for the
    # one-shot script on the same traffic; on the examples' both halves +1.3 points over no refit (docs/research/loop-quality.md).
    refit: bool = Field(
        True, description="after the gate promotes a full fine-tune (which serves meanwhile), train it again on every "
        "real query, the gate's held-out ones too (train.embedder.refit_from says how), and serve that refit in its "
        "place when it passes its check; the held-out queries it learned from then retire to train, and later "
        "candidates are gated on newer queries"
    )
    refit_from: Literal["start", "candidate"] = Field(
        "start", description='"start": the same recipe again from the same start on the train and held-out splits '
        '(a promoting cycle 2.3-2.5x one without the refit on a 2-core CPU); "candidate": continue from the gated '
        'candidate on the held-out pairs and a replay sample of train pairs (refit_replay per held-out pair) for '
        'refit_epochs: about half the refit\'s time, level with "start" on the examples but 2.7 points of unseen '
        'hit@1 behind it on the Perl FAQ\'s both halves')
    refit_replay: float = Field(
        1.0, ge=0, le=100, description='with refit_from = "candidate": train pairs replayed per held-out pair, so the '
        'refit does not forget what the candidate learned; 0..100')
    refit_epochs: float = Field(
        1.0, gt=0, le=100, description='with refit_from = "candidate": passes over the held-out and replayed pairs')
    mode: Literal["full", "adapter", "auto"] = Field(
        "full", description='"full" fine-tunes the whole embedder (a promotion re-indexes the corpus); "adapter" '
        'trains a query-side adapter only (documents keep the serving vectors: promotion rewrites the manifest, no '
        're-index); "auto" trains both and promotes the full one only when it gains at least gate.min_gain more '
        'and its re-index fits index.max_reindex_s'
    )
    adapter_epochs: int = Field(
        20, ge=1, le=10_000, description="passes of the query adapter over the train examples (on cached vectors: "
        "seconds, whatever the corpus size); 1..10000"
    )
    adapter_learning_rate: float = Field(1e-3, gt=0, lt=1, description="AdamW learning rate of the query adapter")
    adapter_batch_size: int = Field(
        64, ge=2, le=65536, description="queries per adapter step; each sees the others' answers as negatives")
    # Without the pull the adapter over-fits the first cycle's ~120-220 queries and falls below the base on
    # both benchmarks' unseen questions; with 1.0 it is above the base on both (docs/benchmarks.md, Large corpora).
    adapter_identity_decay: float = Field(
        1.0, ge=0, description="L2 pull of the adapter towards the identity (the serving model); 0: none"
    )
    adapter_candidates: Literal["batch", "corpus"] = Field(
        "corpus", description='what each query is ranked against in adapter training: "batch" (the batch\'s answers '
        'and hard negatives, as the full fine-tune) or "corpus" (every cached corpus vector, at most 65,536 '
        'sampled: the retrieval objective itself)'
    )

    @field_validator("alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < a <= 1 for a in v):
            raise ValueError("alphas must be a non-empty list of numbers in (0, 1], e.g. [0.5, 0.75, 1.0]")
        return sorted(set(v))


class RerankerTrainSettings(ModelTrainSettings):
    base: str = Field(
        "", description='base cross-encoder (e.g. "BAAI/bge-reranker-base"); empty starts from the packaged MiniLM '
        "with a fresh one-label head"
    )
    start_from: Literal["serving", "base"] = Field(
        "serving", description='"serving" continues from the serving reranker when there is one, "base" restarts'
    )
    loss: Literal["bce", "lambda", "cached_mnrl"] = Field(
        "bce", description='"bce" (BinaryCrossEntropyLoss), "lambda" (LambdaLoss) or "cached_mnrl"'
    )
    # A cold start (MiniLM with a fresh head) scored unseen hit@1 0.06-0.09 against the embedder's 0.61-0.67
    # at every train size both benchmarks give (<= 207 pairs; docs/research/reranker.md). The crossing lies beyond
    # what was measurable; 10,000 is a conservative "not at early traffic", not a measured crossing.
    min_pairs: int = Field(
        10_000, ge=0, description="a cycle trains a cold-start reranker (no train.reranker.base, none serving) only "
        "from this many train pairs; 0 always trains"
    )
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="share of the train split's real queries kept out of reranker training to "
        "choose its fusion weight on (never held-out queries)"
    )
    min_validation: int = Field(
        10, ge=1, description="fewer validation queries than this choose no weight: the reranker gets weight 0 "
        "(the embedder alone)"
    )


# Times each pair of an origin appears per epoch; an origin a config leaves out keeps its default.
DEFAULT_WEIGHTS = {"failure": 1, "hit": 1, "synthetic": 1}


class TrainSettings(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description='"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps"'
    )
    devices: list[str] = Field(
        default_factory=list, description='train on several devices at once with torchrun (DDP), one process each, '
        'e.g. ["cuda:0", "cuda:1"] (or ["cpu", "cpu"]: gloo); empty or one: a single process on train.device'
    )
    trust_remote_code: bool = Field(False, description="allow model repositories to run their own code (off: safer)")
    seed: int = Field(42, description="seed for sampling, shuffling and initialization (same data + seed = same weights on CPU)")
    timeout_s: float = Field(6 * 3600, gt=0, description="a training job running longer is killed and registers nothing")
    max_pairs: int = Field(50_000, ge=1, description="most train pairs replayed per job (newest and most frequent first)")
    weights: dict[Literal["failure", "hit", "synthetic"], int] = Field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        description='times each pair of an origin appears per epoch, e.g. {failure = 2, hit = 1, synthetic = 1} to repeat misses; 0 leaves it out',
    )
    max_synthetic_share: float = Field(
        0.5, ge=0, le=1, description="synthetic pairs are sampled down to at most this share of the pairs, 0..1"
    )
    log_every_s: float = Field(30.0, gt=0, description="seconds between train.progress log events")
    mining: MiningSettings = Field(default_factory=MiningSettings)
    embedder: EmbedderTrainSettings = Field(default_factory=EmbedderTrainSettings)
    reranker: RerankerTrainSettings = Field(default_factory=RerankerTrainSettings)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        if any(w < 0 for w in v.values()):
            raise ValueError("weights must be 0 or more")
        return {**DEFAULT_WEIGHTS, **v}
