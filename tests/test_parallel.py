"""Worker threads for per-image CPU work: order, nesting, and outputs equal to serial."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from audit.imaging import image_properties
from audit.parallel import map_chunks, n_threads
from audit.synthetic import generate


def test_chunks_come_back_in_order_from_several_threads(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "3")
    seen = set()

    def work(part):
        seen.add(threading.current_thread().name)
        return [x * 2 for x in part]

    parts = map_chunks(work, list(range(50)), chunk=3)
    assert [x for p in parts for x in p] == [2 * x for x in range(50)]
    assert len(parts) == 17 and all(name.startswith("cellaudit") for name in seen)


def test_nested_calls_run_serially_instead_of_waiting_on_the_pool(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "2")

    def outer(part):
        return sum(sum(p) for p in map_chunks(lambda q: list(q), list(part), chunk=1))

    assert sum(map_chunks(outer, list(range(40)), chunk=5)) == sum(range(40))


def test_thread_setting(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "1")
    assert n_threads() == 1
    assert map_chunks(lambda p: threading.current_thread().name, [1, 2, 3], chunk=1) == \
        [threading.current_thread().name] * 3
    monkeypatch.setenv("CELLAUDIT_THREADS", "many")
    with pytest.raises(ValueError, match="CELLAUDIT_THREADS"):
        n_threads()
    with pytest.raises(ValueError, match="chunk"):
        map_chunks(len, [1], chunk=0)


def test_properties_do_not_depend_on_the_number_of_threads(monkeypatch):
    images, _, _ = generate(10, size=64, seed=2)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("CELLAUDIT_THREADS", threads)
        results.append(image_properties(images))
    for other in results[1:]:
        for name, values in results[0].items():
            np.testing.assert_array_equal(values, other[name], err_msg=name)
