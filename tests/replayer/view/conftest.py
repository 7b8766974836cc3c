"""Model Explorer conversions made by these tests are cached in a temporary folder, never in the
user's cache (``$TRACEFMT_CACHE_DIR`` is left alone: the recorder keeps its compiled code there)."""

from __future__ import annotations

from pathlib import Path

import pytest

import replayer.view.cache


@pytest.fixture(autouse=True)
def _private_conversion_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path_factory.mktemp("explorer-cache")

    def private() -> Path:
        return folder

    monkeypatch.setattr(replayer.view.cache, "cache_dir", private)
