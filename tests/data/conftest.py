"""Data tests exercise the download path with fake URLs: allow "downloads", but make any real one fail."""

import pytest

from compactnn.data import fetch


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch):
    monkeypatch.delenv(fetch.OFFLINE_ENV, raising=False)

    def refuse(url, timeout=60.0):
        raise OSError(f"tests must not touch the network (asked for {url})")

    monkeypatch.setattr(fetch, "open_url", refuse)
