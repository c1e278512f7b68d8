"""Worker threads for per-image CPU work: order, nesting, and outputs equal to serial; work
made ahead of, or beside, the model call."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from audit.imaging import image_properties
from audit.parallel import ahead, beside, map_chunks, n_threads
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


def test_ahead_yields_every_item_in_order_made_on_another_thread(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "2")
    made_on = []

    def items():
        for i in range(20):
            made_on.append(threading.current_thread().name)
            yield i

    assert list(ahead(items())) == list(range(20))
    assert set(made_on) == {"cellaudit-ahead"}


def test_ahead_makes_the_next_item_while_the_consumer_works(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "2")
    log = []

    def items():
        for i in range(3):
            log.append(f"made {i}")
            yield i

    for i in ahead(items()):
        time.sleep(0.2)  # the consumer's model call; the producer is one item ahead by now
        log.append(f"used {i}")
    assert log.index("made 1") < log.index("used 0")
    assert log.index("made 2") < log.index("used 1")
    assert log.index("made 2") > log.index("used 0")  # never more than one ahead


def test_ahead_raises_the_producers_error_at_its_place_and_stops_when_closed(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "2")

    def failing():
        yield 1
        raise OSError("image 2 unreadable")

    got = []
    with pytest.raises(OSError, match="image 2 unreadable"):
        for item in ahead(failing()):
            got.append(item)
    assert got == [1]

    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    stream = ahead(endless())
    assert next(stream) == 0
    stream.close()  # joins the producer: it stops after the item it is making
    n_made = len(made)
    time.sleep(0.1)
    assert len(made) == n_made <= 3
    assert not any(t.name == "cellaudit-ahead" for t in threading.enumerate())


def test_ahead_and_beside_run_in_the_callers_thread_with_one_thread(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "1")
    here = threading.current_thread().name

    def items():
        yield threading.current_thread().name

    assert list(ahead(items())) == [here]
    assert beside(lambda: threading.current_thread().name).result() == here
    with pytest.raises(ZeroDivisionError):
        beside(lambda: 1 / 0).result()


def test_beside_runs_on_a_background_thread_and_returns_its_result(monkeypatch):
    monkeypatch.setenv("CELLAUDIT_THREADS", "2")
    future = beside(lambda x, y=0: (threading.current_thread().name, x + y), 2, y=3)
    name, value = future.result()
    assert value == 5 and name.startswith("cellaudit-beside")
    with pytest.raises(ZeroDivisionError):
        beside(lambda: 1 / 0).result()
