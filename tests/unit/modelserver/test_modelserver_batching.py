"""The device worker: one batch at a time, merged up to the model's batch_size, a bounded queue, calls first."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from colo.modelserver.batching import DeviceWorker, Job, QueueFull, merged_rows


class Recorder:
    """An executor that records each batch and answers every job with its batch's shape."""

    def __init__(self) -> None:
        self.batches: list[list[Job]] = []
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def __call__(self, jobs: list[Job]) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.002)
        self.batches.append(jobs)
        for job in jobs:
            job.future.set_result((len(jobs), merged_rows(jobs)))
        with self.lock:
            self.running -= 1


def _job(model: str = "m", rows: int = 1, max_rows: int = 8, mergeable: bool = True) -> Job:
    return Job(model_id=model, rows=[[1, 2]] * rows, max_rows=max_rows, mergeable=mergeable)


def _blocked(worker: DeviceWorker) -> threading.Event:
    """Occupy the device thread until the returned event is set (so jobs pile up in the queue)."""
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(5)

    threading.Thread(target=worker.call, args=(hold,), daemon=True).start()
    assert started.wait(5)
    return release


def test_queued_jobs_of_one_model_merge_up_to_max_rows() -> None:
    rec = Recorder()
    worker = DeviceWorker(rec, wait_secs=0.0, max_queue=100)
    release = _blocked(worker)
    futures = [worker.submit(_job(rows=3, max_rows=8)) for _ in range(5)]  # 15 rows: 3 batches of <= 8
    other = worker.submit(_job(model="other", rows=1))
    gen = [worker.submit(_job(model="m", rows=1, mergeable=False)) for _ in range(2)]
    release.set()
    answers = [f.result(5) for f in futures]
    assert all(rows <= 8 for _, rows in answers)
    assert [merged_rows(b) for b in rec.batches if b[0].model_id == "m" and b[0].mergeable] == [6, 6, 3]
    assert other.result(5) == (1, 1)
    assert [g.result(5) for g in gen] == [(1, 1), (1, 1)]  # generators one per batch
    assert rec.most_at_once == 1  # never two batches on the device at once
    worker.close()


def test_a_lone_request_waits_at_most_the_batch_wait() -> None:
    rec = Recorder()
    worker = DeviceWorker(rec, wait_secs=0.05, max_queue=10)
    worker.call(lambda: None)  # the thread is up
    started = time.monotonic()
    assert worker.submit(_job()).result(5) == (1, 1)
    assert time.monotonic() - started < 0.05 + 0.5  # the wait, plus slack for a busy test machine
    full = worker.submit(_job(rows=8, max_rows=8))  # already full: no wait at all
    assert full.result(5) == (1, 8)
    worker.close()


def test_a_request_arriving_within_the_wait_joins_the_batch() -> None:
    rec = Recorder()
    worker = DeviceWorker(rec, wait_secs=0.5, max_queue=10)
    with worker.arriving() as on_its_way:  # the second request is being checked in its HTTP handler
        first = worker.submit(_job(rows=2, max_rows=4))
        time.sleep(0.05)
        second = worker.submit(_job(rows=2, max_rows=4), on_its_way)  # fills the batch: it runs at once
    assert first.result(5) == second.result(5) == (2, 4)
    worker.close()


def test_nothing_arriving_means_no_wait() -> None:
    """A lone request runs at once, however long the batch wait: nobody is on the way to join it."""
    rec = Recorder()
    worker = DeviceWorker(rec, wait_secs=30.0, max_queue=10)
    worker.call(lambda: None)
    with worker.arriving() as arrival:
        lone = worker.submit(_job(rows=1, max_rows=8), arrival)
    assert lone.result(5) == (1, 1)  # not 30 s later: the future would time out


def test_an_arrival_that_fails_its_checks_releases_the_waiting_batch() -> None:
    rec = Recorder()
    worker = DeviceWorker(rec, wait_secs=30.0, max_queue=10)
    worker.call(lambda: None)
    with pytest.raises(ValueError), worker.arriving():
        first = worker.submit(_job(rows=1, max_rows=8))
        time.sleep(0.05)  # the batch waits for the arrival...
        raise ValueError("a bad request: never queued")  # ...which ends here
    assert first.result(5) == (1, 1)
    worker.close()


def test_full_queue_refuses() -> None:
    worker = DeviceWorker(Recorder(), wait_secs=0.0, max_queue=2)
    release = _blocked(worker)
    futures = [worker.submit(_job()), worker.submit(_job())]
    assert worker.depth == 2
    with pytest.raises(QueueFull, match="max_queue 2"):
        worker.submit(_job())
    release.set()
    assert all(f.result(5) for f in futures)
    worker.close()
    with pytest.raises(QueueFull):
        worker.submit(_job())


def test_close_fails_what_waits_and_errors_reach_the_caller() -> None:
    def broken(jobs: list[Job]) -> None:
        raise RuntimeError("executor bug")

    worker = DeviceWorker(broken, wait_secs=0.0, max_queue=10)
    with pytest.raises(RuntimeError, match="executor bug"):
        worker.submit(_job()).result(5)
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    release = _blocked(worker)
    waiting: Future[Any] = worker.submit(_job())
    worker.close()
    release.set()
    with pytest.raises(QueueFull):
        waiting.result(5)


def test_depth_is_reported() -> None:
    depths: list[int] = []
    worker = DeviceWorker(Recorder(), wait_secs=0.0, max_queue=10, on_depth=depths.append)
    release = _blocked(worker)
    worker.submit(_job())
    worker.submit(_job())
    release.set()
    deadline = time.monotonic() + 5
    while worker.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 2 in depths and depths[-1] == 0
    worker.close()


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        DeviceWorker(Recorder(), wait_secs=-1, max_queue=1)
    with pytest.raises(ValueError):
        DeviceWorker(Recorder(), wait_secs=0, max_queue=0)
