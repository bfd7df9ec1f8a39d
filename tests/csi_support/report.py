"""Figures a test prints into `make test`'s own output (not into pytest's capture, which
shows only on failure): the crash sweeps' totals, the shutdown timings, the fuzzing."""

from __future__ import annotations

import contextlib

import pytest


def show(request: pytest.FixtureRequest, text: str) -> None:
    """Print ``text`` on the terminal now, whatever pytest's capture setting."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + text, flush=True)
