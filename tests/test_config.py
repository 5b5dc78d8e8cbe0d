import subprocess
import sys

import pytest

from daemon.cli import main
from daemon.config import load_settings
from daemon.errors import ConfigError


def test_defaults_and_relative_paths(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('state_dir = "st"\n[ingest]\npaths = ["logs/*.jsonl"]\n')
    s = load_settings(cfg)
    assert s.state_dir == tmp_path / "st"
    assert s.ingest.paths == [str(tmp_path / "logs/*.jsonl")]
    assert s.store_url == f"sqlite:///{tmp_path / 'st' / 'ragloop.db'}"
    assert s.ingest.k == 10 and s.gate.heldout_fraction == 0.2


def test_repo_config_documents_exactly_the_defaults():
    """config.toml lists every setting with its default value: they must not drift apart."""
    from daemon.config import Settings

    from helpers import REPO

    s = load_settings(REPO / "config.toml")
    skip = {"state_dir", "source", "ingest"}
    assert s.model_dump(exclude=skip) == Settings().model_dump(exclude=skip)
    assert s.ingest.model_dump(exclude={"paths"}) == Settings().ingest.model_dump(exclude={"paths"})


def test_repo_config_names_every_setting():
    """A setting left out of config.toml still equals its default, so the test above cannot see it; the file
    says it lists every setting, so each one must be written there."""
    import tomllib

    from pydantic import BaseModel

    from daemon.config import Settings

    from helpers import REPO

    def missing(model: type[BaseModel], table: dict, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out += missing(sub, table.get(name, {}), f"{prefix}{name}.")
            elif name not in table and not field.exclude:  # excluded: not a setting (where they were read from)
                out.append(prefix + name)
        return out

    assert missing(Settings, tomllib.loads((REPO / "config.toml").read_text())) == []


def test_every_bad_field_is_listed_with_a_hint(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[ingest]\nk = "ten"\nbatch_lines = 0\ntypo_field = 1\n'
        '[gate]\nheldout_fraction = 1.5\n[log]\nlevel = "loud"\n[store]\nurl = "mysql://x"\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    problems = "\n".join(exc.value.problems)
    for field in ("ingest.k", "ingest.batch_lines", "ingest.typo_field", "gate.heldout_fraction", "log.level",
                  "store.url"):
        assert field in problems, field
    assert len(exc.value.problems) == 6
    assert "unknown setting" in problems and "write" in problems


def test_bad_config_exits_2_naming_fields(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[ingest]\nk = -1\nmax_ids = "many"\n')
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "status"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ingest.k" in proc.stderr and "ingest.max_ids" in proc.stderr


def test_not_toml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    assert main(["-c", str(bad), "status"]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["-c", str(tmp_path / "absent.toml"), "status"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_a_replaced_gate_setting_says_what_replaced_it(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[gate]\nmax_guard_drop = 0.02\nbootstrap_samples = 2000\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    problems = exc.value.problems
    assert len(problems) == 2
    assert any("gate.max_guard_drop: replaced by gate.guard_margin" in p for p in problems)
    assert any("gate.bootstrap_samples: replaced by gate.permutation_samples" in p for p in problems)
