"""The documentation: the README fits a screen and links only what exists, every page of docs/ is in
the site's navigation, the site builds in mkdocs' strict mode (where a broken link fails it), and
the results page is the one bench/*.json gives."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks import pages

ROOT = Path(__file__).resolve().parents[2]


def build(project: Path) -> subprocess.CompletedProcess:  # no -q: mkdocs then stops counting warnings
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(project / "site")], capture_output=True, text=True, timeout=120)


def test_the_site_builds_strictly_and_a_broken_link_fails_the_build(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    built = build(tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "usage" / "python-api" / "index.html").is_file()
    with open(tmp_path / "docs" / "usage" / "training.md", "a") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    broken = build(tmp_path)
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr, broken.stderr[-3000:]


def nav_pages(entries) -> list[str]:
    found = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def test_every_page_of_docs_is_in_the_navigation_and_every_entry_exists():
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav) == on_disk


def test_the_readme_fits_one_screen_and_links_only_what_exists():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    targets = [t for t in re.findall(r"\]\(([^)]+)\)", readme) if "://" not in t]
    assert targets and all((ROOT / t.split("#")[0]).exists() for t in targets), targets


def test_the_results_page_is_what_the_recorded_results_give(tmp_path):
    written = pages.write(tmp_path / "results.md")
    assert written.read_text() == (ROOT / "docs" / "benchmarks" / "results.md").read_text(), \
        "docs/benchmarks/results.md is stale: python -m benchmarks.pages"
