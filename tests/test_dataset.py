import pytest
from datasets import Dataset
from sentence_transformers.util import mine_hard_negatives

from daemon.models import Corpus, cache_dir, corpus_embeddings
from daemon.train import as_id_list, assemble, mine_negatives, select_pairs


@pytest.mark.parametrize("range_min,relative_margin,max_score", [(0, 0.05, 0.95), (2, 0.0, 0.6)])
def test_mining_from_cached_vectors_picks_what_mine_hard_negatives_picks(ingested_settings, engine, minilm, range_min,
                                                                         relative_margin, max_score):
    m = ingested_settings.train.mining
    m.range_min, m.relative_margin, m.max_score = range_min, relative_margin, max_score
    pairs = select_pairs(engine, ingested_settings)
    ours = mine_negatives(pairs, engine, minilm, ingested_settings, "embedder-v0")
    corpus = Corpus(engine)
    first: dict[str, str] = {}
    for p in pairs:
        first.setdefault(p["query"], p["chunk_id"])
    by_text = {t: c for c, t in zip(corpus.ids, corpus.texts)}
    theirs = mine_hard_negatives(
        Dataset.from_dict({"anchor": list(first), "positive": [corpus.text_of[c] for c in first.values()]}), minilm,
        corpus=corpus.texts, range_min=range_min, range_max=m.range_max, max_score=max_score,
        relative_margin=relative_margin or None, num_negatives=m.num_negatives, sampling_strategy="top",
        output_format="n-tuple", verbose=False)
    cols = [c for c in theirs.column_names if c.startswith("negative")]
    expected = {row["anchor"]: [by_text[row[c]] for c in cols] for row in theirs}
    assert len(first) > 10 and len(expected) > 5
    # mine_hard_negatives drops a query with fewer than num_negatives candidates left; ours keeps what is left
    for q, negs in expected.items():
        assert ours[q] == negs, q


def test_mining_reads_the_serving_models_cached_vectors(ingested_settings, engine, minilm):
    corpus = Corpus(engine)
    emb = corpus_embeddings(minilm, corpus, cache_dir(ingested_settings), "embedder-v0")

    class Refusing:
        def encode_document(self, texts, **kw):
            assert len(texts) < len(corpus.ids), "the corpus was encoded again"
            return minilm.encode_document(texts, **kw)

        def encode_query(self, texts, **kw):
            return minilm.encode_query(texts, **kw)

    data = assemble(engine, ingested_settings, Refusing(), "embedder-v0")
    assert emb.shape[0] == len(corpus.ids) and data.examples
    assert all(len(e.negative_ids) == ingested_settings.train.mining.num_negatives + ingested_settings.train.mining.random_negatives
               for e in data.examples)


def test_the_embedder_takes_the_first_negatives_production_s_own_wrong_results_first(ingested_settings, engine, minilm):
    from daemon.train import embedder_dataset

    data = assemble(engine, ingested_settings, minilm, "embedder-v0")
    full, one, none = embedder_dataset(data), embedder_dataset(data, 1), embedder_dataset(data, 0)
    n = ingested_settings.train.mining.num_negatives + ingested_settings.train.mining.random_negatives
    assert full.column_names == ["anchor", "positive"] + [f"negative_{i + 1}" for i in range(n)]
    assert one.column_names == ["anchor", "positive", "negative_1"] and none.column_names == ["anchor", "positive"]
    assert one["negative_1"] == full["negative_1"]
    pairs = {p["id"]: p for p in select_pairs(engine, ingested_settings)}
    production = {i: as_id_list(p["hard_negative_ids"]) for i, p in pairs.items()}
    with_production = [e for e in data.examples if production[e.pair_id]]
    assert with_production and all(e.negative_ids[0] in production[e.pair_id] for e in with_production)
