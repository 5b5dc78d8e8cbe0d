"""ragloop: a daemon beside a production RAG system that turns its retrieval misses into better models.

One room (subpackage) per stage, in layers (docs/development.md): store, models, data, ingest, gate, train,
serve, observe, service; ``cli``, ``config``, ``errors`` and ``journal`` at the top.
"""
