"""The commit every benchmark and report names (dcmip.provenance.commit)."""
import re
import shutil
import subprocess

import pytest

from dcmip import provenance


def test_environment_wins_over_git(monkeypatch):
    monkeypatch.setenv("DCMIP_COMMIT", "abc1234")
    assert provenance.commit() == "abc1234"


def test_git_head_of_the_repository(monkeypatch):
    monkeypatch.delenv("DCMIP_COMMIT", raising=False)
    if shutil.which("git") is None:
        pytest.skip("no git")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=provenance.ROOT, capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("the tree is not a git checkout")
    assert provenance.commit() == head.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{4,40}", provenance.commit())


def test_unknown_outside_a_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("DCMIP_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.commit(str(tmp_path)) == "unknown"


def test_unknown_without_git(monkeypatch, tmp_path):
    monkeypatch.delenv("DCMIP_COMMIT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable on the path
    assert provenance.commit() == "unknown"
