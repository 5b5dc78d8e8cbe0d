"""The docs: the site builds with --strict (a broken link fails), the configuration reference is the settings
model's, and the README stays a product page."""

import os
import subprocess
import sys

from daemon.config import reference_page as render

from helpers import REPO


def test_the_docs_site_builds_strict(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "configuration-reference" / "index.html").exists()


def test_the_configuration_reference_is_generated_from_the_settings_model():
    page = (REPO / "docs" / "configuration-reference.md").read_text()
    assert page == render(), "docs/configuration-reference.md is stale: python -m daemon.config.reference > it"


def test_every_setting_is_in_the_reference():
    from daemon.config import Settings

    page = render()

    def keys(model, prefix=""):
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            sub = f.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield prefix, name

    for table, name in keys(Settings):
        section = f"## `[{table.rstrip('.')}]`" if table else "## Top level"
        block = page.split(section, 1)[1].split("\n## ", 1)[0]
        assert f"| `{name}` |" in block, f"{table}{name} missing from the reference"


def test_the_readme_is_a_product_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
