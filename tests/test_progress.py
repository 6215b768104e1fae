"""Draining progress generators: the return value, and every step to a callback."""

from __future__ import annotations

from napari_unet.progress import collect, drain


def counting(n: int):
    for i in range(n):
        yield i, n
    return "result"


def test_drain_returns_the_result_and_passes_every_step_on():
    assert drain(counting(3)) == "result"
    seen = []
    assert drain(counting(3), seen.append) == "result"
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_collect_keeps_the_steps():
    assert collect(counting(2)) == ([(0, 2), (1, 2)], "result")
