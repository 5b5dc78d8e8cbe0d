import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from daemon.config import settings_from_dict
from daemon.errors import ConfigError
from daemon.models import load_embedder, packaged_minilm
from daemon.train import ValidationPool, interpolate, run_job, validation_position


def test_interpolation_is_the_weighted_mean_of_two_models(minilm, damaged_minilm):
    a, b = load_embedder(packaged_minilm(), "cpu"), load_embedder(damaged_minilm, "cpu")
    wa = {k: v.clone() for k, v in a.state_dict().items()}
    wb = b.state_dict()
    mixed = interpolate(a, b, 0.25)
    assert mixed is a
    for k, v in mixed.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.25 * wa[k] + 0.75 * wb[k])
        else:  # integer buffers (position ids) are not averaged
            assert torch.equal(v, wa[k])
    same = interpolate(load_embedder(packaged_minilm(), "cpu"), b, 1.0)
    q = ["How do I read a file line by line?"]
    np.testing.assert_allclose(same.encode(q), minilm.encode(q), atol=1e-6)


def test_alphas_must_lie_in_zero_to_one(tmp_path):
    with pytest.raises(ConfigError, match="alphas"):
        settings_from_dict({"train": {"embedder": {"alphas": [0.0, 0.5]}}}, "t", base_dir=tmp_path)
    s = settings_from_dict({"train": {"embedder": {"alphas": [1.0, 0.5, 0.5]}}}, "t", base_dir=tmp_path)
    assert s.train.embedder.alphas == [0.5, 1.0]


@pytest.fixture
def validating(ingested_settings):
    """The small store's embedder job with validation on: its ~6 validation queries are enough here."""
    ingested_settings.train.embedder.validation_fraction = 0.2
    ingested_settings.train.embedder.min_validation = 2
    ingested_settings.train.embedder.max_steps = 0
    ingested_settings.train.embedder.epochs = 2
    ingested_settings.train.embedder.alphas = [0.5, 1.0]
    ingested_settings.train.embedder.batch_size = 2  # the fixture's few distinct negatives fill no-duplicate batches of 2
    return ingested_settings


@pytest.mark.slow
def test_the_embedder_keeps_validation_queries_out_and_saves_the_alpha_and_epoch_it_chose(validating, engine):
    r = run_job(engine, validating, "embedder")
    t = r.training
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, query, split FROM training_pairs")).all()
    fraction = validating.train.embedder.validation_fraction
    carved = {q for i, q, split in rows if split == "train" and validation_position(q) < fraction}
    trained = set(t["pairs"]["ids"])
    assert carved and trained == {i for i, q, split in rows if split == "train" and q not in carved}
    es, ip = t["early_stopping"], t["interpolation"]
    assert ip["validation_queries"] == len(carved) and ip["metric"] == "ndcg@10"
    assert set(ip["by_alpha"]) == {"0.5", "1.0"} and ip["by_alpha"][str(ip["alpha"])] == max(ip["by_alpha"].values())
    epochs = [e for e, _ in es["by_epoch"]]
    assert epochs == sorted(set(epochs)) and es["best_epoch"] in epochs and es["epochs_run"] <= 2
    assert ip["by_alpha"]["1.0"] == max(m for _, m in es["by_epoch"])  # the best epoch is what was interpolated
    # the saved weights are the chosen interpolation: they score what training.json says on the same pool
    validation = {}
    for _, q, split in rows:
        if q in carved:
            validation.setdefault(q, set())
    with engine.connect() as conn:
        for q, cid in conn.execute(sa.text("SELECT query, chunk_id FROM training_pairs WHERE split = 'train'")):
            if q in carved:
                validation[q].add(cid)
    pool = ValidationPool.build(load_embedder(packaged_minilm(), "cpu"), engine, validating, "embedder-v0", validation)
    assert pool.score(load_embedder(r.path, "cpu")) == pytest.approx(ip["by_alpha"][str(ip["alpha"])], abs=1e-3)
    assert json.loads((Path(r.path) / "training.json").read_text())["interpolation"] == ip


@pytest.mark.slow
def test_too_few_validation_queries_carve_nothing(ingested_settings, engine):
    ingested_settings.train.embedder.validation_fraction = 0.2
    ingested_settings.train.embedder.min_validation = 1000
    t = run_job(engine, ingested_settings, "embedder").training
    with engine.connect() as conn:
        train = set(conn.scalars(sa.text("SELECT id FROM training_pairs WHERE split = 'train'")))
    assert set(t["pairs"]["ids"]) == train and "interpolation" not in t and "early_stopping" not in t
