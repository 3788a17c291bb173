"""Planning and the SQL job lifecycle on SQLite and PostgreSQL (no workers)."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.jobs import lifecycle
from phaseboard.server.jobs.base import NullQueue
from phaseboard.server.jobs.planning import config_hash
from phaseboard.server.models import Job, Result
from phaseboard.server.storage import BlobStore
from tests.server.jobs.conftest import seed_run


def _queue(settings):  # type: ignore[no-untyped-def]
    db = Database(settings)
    return NullQueue(settings, db, BlobStore(settings.storage_dir)), db


def test_identical_work_is_planned_once_and_new_config_is_new_work(settings) -> None:
    run_id, ckpts = seed_run(settings, [1, 10])
    queue, db = _queue(settings)
    first = queue.plan_and_enqueue(run_id, ["llc", "metrics"])
    again = queue.plan_and_enqueue(run_id, ["metrics", "llc"], ckpts)
    assert sorted(first) == sorted(again) and len(first) == 4
    other = queue.plan_and_enqueue(run_id, ["llc"], config={"llc": {"num_draws": 7}})
    assert not set(other) & set(first)
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count(Job.id))) == 6
        job = s.get(Job, other[0])
        assert job.config["num_draws"] == 7 and job.config["num_chains"] == 2
        assert job.config_hash == config_hash(job.config)
    db.dispose()


def test_claim_is_exclusive_and_finish_is_fenced_after_requeue(settings) -> None:
    run_id, _ = seed_run(settings, [5])
    queue, db = _queue(settings)
    (job_id,) = queue.plan_and_enqueue(run_id, ["llc"])
    first = lifecycle.claim(db, job_id, "w1")
    assert first is not None and lifecycle.claim(db, job_id, "w2") is None
    # w1 goes silent: the sweep requeues it and w2 takes over.
    assert lifecycle.requeue_stale(db, 0.0, max_attempts=3) == [job_id]
    second = lifecycle.claim(db, job_id, "w2")
    assert second is not None and second.attempt == 2
    # w1 wakes up late: its heartbeat and its results are refused.
    assert not lifecycle.heartbeat(db, first, 0.5, "late")
    assert not lifecycle.finish(db, first, [{"restriction": "", "values": {"mean": 1.0}}])
    assert lifecycle.finish(db, second, [{"restriction": "", "values": {"mean": 2.0}}])
    with db.session() as s:
        rows = s.scalars(sa.select(Result).where(Result.job_id == job_id)).all()
        assert [r.values["mean"] for r in rows] == [2.0]
        assert rows[0].step == 5
        assert s.get(Job, job_id).state == "done"
    db.dispose()


def test_stale_job_fails_once_attempts_are_used_up(settings) -> None:
    run_id, _ = seed_run(settings, [5])
    queue, db = _queue(settings)
    (job_id,) = queue.plan_and_enqueue(run_id, ["llc"])
    for _ in range(2):
        assert lifecycle.claim(db, job_id, "w") is not None
        lifecycle.requeue_stale(db, 0.0, max_attempts=2)
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and "worker lost" in job.error and job.attempts == 2
    db.dispose()


def test_idle_peers_split_a_runs_batched_jobs_and_the_last_takes_the_rest(settings) -> None:
    """Two workers and 8 LLC jobs: the first takes its share (4), the second, with the
    first busy, takes all that is left."""
    run_id, _ = seed_run(settings, list(range(1, 9)))
    queue, db = _queue(settings)
    ids = sorted(queue.plan_and_enqueue(run_id, ["llc"]))
    lead_a = lifecycle.claim(db, ids[0], "worker-a")
    batch_a = [lead_a, *lifecycle.claim_companions(db, lead_a, limit=8, peers=2)]
    assert [x.job_id for x in batch_a] == ids[:4]
    lead_b = lifecycle.claim(db, ids[4], "worker-b")
    batch_b = [lead_b, *lifecycle.claim_companions(db, lead_b, limit=8, peers=2)]
    assert [x.job_id for x in batch_b] == ids[4:]
    db.dispose()


def test_a_single_worker_batches_up_to_the_limit(settings) -> None:
    run_id, _ = seed_run(settings, list(range(1, 7)))
    queue, db = _queue(settings)
    ids = sorted(queue.plan_and_enqueue(run_id, ["llc"]))
    lead = lifecycle.claim(db, ids[0], "worker-a")
    assert len(lifecycle.claim_companions(db, lead, limit=4, peers=1)) == 3
    db.dispose()


def test_racing_peers_that_each_hold_a_lead_split_evenly(settings) -> None:
    """Both workers claimed a lead at once: each takes 3 companions (4 + 4), not 1 + 6."""
    run_id, _ = seed_run(settings, list(range(1, 9)))
    queue, db = _queue(settings)
    ids = sorted(queue.plan_and_enqueue(run_id, ["llc"]))
    lead_a = lifecycle.claim(db, ids[0], "worker-a")
    lead_b = lifecycle.claim(db, ids[1], "worker-b")
    batch_a = lifecycle.claim_companions(db, lead_a, limit=16, peers=2)
    batch_b = lifecycle.claim_companions(db, lead_b, limit=16, peers=2)
    assert (len(batch_a), len(batch_b)) == (3, 3)
    db.dispose()


def test_peers_claiming_at_the_same_moment_each_get_a_whole_batch(settings) -> None:
    """32 jobs, two workers that counted before either claimed: 16 + 16. Companions claimed
    one row at a time interleaved (the bench saw 8 + 9, then an unbalanced second round)."""
    run_id, _ = seed_run(settings, list(range(1, 33)))
    queue, db = _queue(settings)
    ids = sorted(queue.plan_and_enqueue(run_id, ["llc_restricted"]))
    leads = [lifecycle.claim(db, ids[0], "worker-a"), lifecycle.claim(db, ids[1], "worker-b")]
    start = threading.Barrier(2)
    batches: dict[str, list[int]] = {}

    def take(lead: lifecycle.Lease) -> None:
        start.wait()
        companions = lifecycle.claim_companions(db, lead, limit=16, peers=2)
        batches[lead.worker_id] = [lead.job_id, *(x.job_id for x in companions)]

    threads = [threading.Thread(target=take, args=(lead,)) for lead in leads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(b) for b in batches.values()) == [16, 16]
    assert sorted(batches["worker-a"] + batches["worker-b"]) == ids
    db.dispose()


def test_a_peer_about_to_finish_is_left_its_share(settings) -> None:
    """Worker b holds 8 jobs at 90 %: they count as 0.8 of a job, so worker a, with 16
    queued, takes 9 (ceil((15 + 0.8 + 1) / 2)) and leaves 7, not 12 and 4."""
    run_id, _ = seed_run(settings, list(range(1, 25)))
    queue, db = _queue(settings)
    ids = sorted(queue.plan_and_enqueue(run_id, ["llc_restricted"]))
    for i in ids[:8]:
        lease = lifecycle.claim(db, i, "worker-b")
        assert lease is not None and lifecycle.heartbeat(db, lease, progress=0.9)
    lead = lifecycle.claim(db, ids[8], "worker-a")
    batch = [lead, *lifecycle.claim_companions(db, lead, limit=16, peers=2)]
    assert [x.job_id for x in batch] == ids[8:17]
    db.dispose()
