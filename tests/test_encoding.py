"""Encoding over several processes (index.encode_devices): the same vectors as in process, in the index too."""

from __future__ import annotations

import os

import numpy as np
import pytest

from daemon.models import cache_dir, encode_documents, encode_pool, encode_queries, load_vectors
from daemon.serve import build_index

from helpers import example_chunks


def test_one_device_or_none_encodes_in_process(minilm):
    with encode_pool(minilm, ["cpu"]) as pool:
        assert pool is None
    assert encode_documents(minilm, []).shape == (0, 384) and encode_queries(minilm, []).shape == (0, 384)


@pytest.mark.slow
def test_two_cpu_processes_encode_what_one_process_does(minilm):
    texts = [c["text"] for c in example_chunks(40)]
    alone = encode_documents(minilm, texts)
    with encode_pool(minilm, ["cpu", "cpu"]) as pool:
        assert len(pool["processes"]) == 2 and all(p.is_alive() for p in pool["processes"])
        spread = encode_documents(minilm, texts, 8, pool)
        pids = [p.pid for p in pool["processes"]]
    np.testing.assert_allclose(spread, alone, atol=1e-5)
    for pid in pids:  # stopped and reaped on exit
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert str(minilm.device) == "cpu"


@pytest.mark.slow
def test_the_index_builds_over_two_processes(settings, engine, minilm):
    from daemon.data import upsert_chunks

    chunks = example_chunks(60)
    upsert_chunks(engine, [{**c, "metadata": None} for c in chunks], mark_missing_removed=False)
    settings.index.encode_devices = ["cpu", "cpu"]
    report = build_index(engine, settings, model=minilm)
    assert report.encoded == 60 and report.chunks == 60
    cached = load_vectors(cache_dir(settings), "embedder-v0")
    from daemon.data import text_hash

    ours = np.stack([cached[text_hash(c["text"])] for c in chunks])
    np.testing.assert_allclose(ours, encode_documents(minilm, [c["text"] for c in chunks]), atol=1e-5)
