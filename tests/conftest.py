"""Shared fixtures: where ../shared lives, and skipping cleanly when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MEDIA = SHARED / "media"
MODELS = SHARED / "models"

# tests/extpkg is an example third-party package with tests of its own, which import it as
# installed; tests/e2e/test_extending.py installs it in a temporary folder and runs them there.
collect_ignore = ["extpkg"]


@pytest.fixture
def shared_media() -> Path:
    """../shared/media (real clips for tests); skips the test when it is absent."""
    if not (MEDIA / "SOURCES.md").is_file():
        pytest.skip(f"real media not available: {MEDIA} is absent")
    return MEDIA


@pytest.fixture
def shared_models() -> Path:
    """../shared/models (published weights for tests); skips the test when it is absent."""
    if not MODELS.is_dir():
        pytest.skip(f"published model weights not available: {MODELS} is absent")
    return MODELS
