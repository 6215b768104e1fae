"""Shared fixtures. GUI tests get napari's ``make_napari_viewer`` from napari's own
pytest plugin; pytest-xvfb starts the virtual X server for them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

EXIT_STATUS = pytest.StashKey[int]()

DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("NAPARI_UNET_SHARED_DATA", DEFAULT_SHARED_DATA))


@pytest.fixture(scope="session", autouse=True)
def hardware_cache(tmp_path_factory) -> Path:
    """A fresh cache of measured run settings for the session (never the user's own);
    subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("napari-unet-cache")
    previous = os.environ.get("NAPARI_UNET_CACHE_DIR")
    os.environ["NAPARI_UNET_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("NAPARI_UNET_CACHE_DIR", None)
    else:
        os.environ["NAPARI_UNET_CACHE_DIR"] = previous


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache of measured run settings of this test's own (its file's path)."""
    from napari_unet import hardware

    monkeypatch.setenv(hardware.CACHE_ENV, str(tmp_path))
    return tmp_path / hardware.CACHE_FILE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set NAPARI_UNET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread: tiny test nets gain nothing from threads, and on a
    shared 2-core machine OpenMP's spinning threads slow everything else down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with the session's exit status once every plugin has finished, skipping
    the interpreter's teardown. One process hosts Qt and vispy, dask's IO loop, zarr's
    IO thread and torch's thread pools; tearing them down in whatever order the
    interpreter picks crashed once (SIGSEGV) after every test had passed and been
    reported, and turned a green run red. Nothing a test checks runs after this."""
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])
