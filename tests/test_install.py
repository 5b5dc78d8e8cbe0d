"""deploy/install.sh, run for real in a throwaway root (--prefix): prerequisites, the venv and torch, config,
secrets template, the unit verified by systemd-analyze, the wrapper, the corpus loaded before any start.

Not exercised here (no booted systemd in a test): creating the ragloop user, `systemctl enable --now`, and the
wrapper's switch to that user (runuser); the unit itself is verified, and the daemon under systemd is tested by
tests/test_service.py's notify socket."""

import json
import subprocess

import pytest

from helpers import REPO, example_chunks


@pytest.mark.slow
def test_the_installer_in_a_throwaway_root(tmp_path):
    corpus = tmp_path / "chunks.jsonl"
    corpus.write_text("".join(json.dumps(c) + "\n" for c in example_chunks(30)))
    root = tmp_path / "root"
    # --torch: this machine's CPU wheel (the default, PyTorch's CPU index, is not reachable from CI)
    run = subprocess.run(["bash", str(REPO / "deploy" / "install.sh"), "--prefix", str(root), "--cpu",
                          "--torch", "torch==2.13.0", "--corpus", str(corpus)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [line for line in run.stdout.splitlines() if line.startswith("==> ")]
    assert steps[0].startswith("==> prerequisites: Python 3.")
    assert "==> torch for a cpu host: pip install torch==2.13.0" in steps
    assert any("verified by systemd-analyze" in s for s in steps) and any("corpus loaded" in s for s in steps)
    assert "ragloop status" in run.stdout and "systemctl enable" not in run.stdout  # a prefix starts nothing

    wrapper = root / "usr" / "local" / "bin" / "ragloop"
    status = json.loads(subprocess.run([str(wrapper), "status", "--json"], capture_output=True, text=True,
                                       check=True, cwd=tmp_path).stdout)
    assert status["config"] == str(root / "etc" / "ragloop" / "config.toml")
    assert status["state_dir"] == str(root / "var" / "lib" / "ragloop") and status["chunks"]["active"] == 30
    env = (root / "etc" / "ragloop" / "ragloop.env").read_text()
    assert all(f"#{var}=" in env for var in ("PGPASSWORD", "QDRANT_API_KEY", "ANTHROPIC_API_KEY", "HF_HUB_OFFLINE"))
    assert oct((root / "etc" / "ragloop" / "ragloop.env").stat().st_mode & 0o777) == "0o600"
    unit = root / "etc" / "systemd" / "system" / "ragloop.service"
    assert unit.read_text() == (REPO / "deploy" / "ragloop.service").read_text()
    # a second run keeps the administrator's edits
    config = root / "etc" / "ragloop" / "config.toml"
    config.write_text(config.read_text() + "\n# edited\n")
    again = subprocess.run(["bash", str(REPO / "deploy" / "install.sh"), "--prefix", str(root), "--cpu",
                            "--torch", "torch==2.13.0"], capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0 and config.read_text().endswith("# edited\n")
    assert "ragloop corpus load" in again.stdout  # no corpus given this time: says how to load one
