"""The batching engine: requests share model calls, and each one is what it would be alone."""

import threading
from dataclasses import replace

import pytest
import torch

from core.batching import BatchRequest, Busy, Done, Engine, Failed, Queued, StepDone
from core.pipeline import Pipeline
from core.runtime import Runtime


@pytest.fixture(scope="module")
def pipelines(tiny_checkpoints, tiny_dit_checkpoints):
    runtime = Runtime.create("cpu", "fp32")
    return {name: Pipeline.load(tiny_checkpoints[name] if name in tiny_checkpoints else tiny_dit_checkpoints[name],
                                runtime) for name in ("tiny-elt", "tiny-vanilla", "tiny-dit-elt")}


def request(pipelines, name="tiny-elt", label=1, loops=2, seed=0, steps=None, samples=1, cfg=None):
    p = pipelines[name]
    return BatchRequest(p, name, (label,) * samples, loops, p.sampler(steps, cfg), seed)


def final(ticket):
    events = list(ticket.events(timeout=60))
    assert isinstance(events[-1], Done), events[-1]
    return events


def alone(req):
    """The request through the one-request path (Pipeline.stream), as `python -m core.sample` runs it."""
    state = None
    for result in req.pipeline.stream(req.labels, req.loops, req.sampler, req.seed):
        state = result.state
    return state.tokens


def agreement(a, b):
    return float((a == b).float().mean()) if a.dtype == torch.long else float(torch.isclose(a, b, atol=1e-4).float().mean())


def test_a_mixed_batch_gives_every_request_what_it_gets_alone(pipelines):
    engine, dit = Engine(max_batch=16), pipelines["tiny-dit-elt"]
    reqs = [request(pipelines, loops=1, seed=3), request(pipelines, loops=3, seed=4, steps=5, cfg=0.0),
            request(pipelines, "tiny-vanilla", loops=4, seed=5), request(pipelines, label=7, loops=2, seed=6, samples=2),
            request(pipelines, "tiny-dit-elt", loops=2, seed=7), request(pipelines, "tiny-dit-elt", loops=3, seed=8),
            BatchRequest(dit, "tiny-dit-elt", (3, 5), 3, replace(dit.sampler(), guide_loop=1), 9)]  # loop guidance
    tickets = [engine.submit(r) for r in reqs]
    results = [final(t) for t in tickets]
    for req, events in zip(reqs, results):
        done = events[-1]
        # fp32 on CPU: a row's logits may differ in the last bits with the batch size, so token agreement
        assert agreement(done.tokens, alone(req)) >= 0.99, req
        steps = [e for e in events if isinstance(e, StepDone)]
        assert [e.step for e in steps] == list(range(1, req.sampler.steps + 1))
        assert steps[0].predicted is not None and steps[0].loop_pixels.shape[0] == req.loops
        assert done.pixels.shape[0] == len(req.labels)
    assert max(e.batch_rows for ev in results for e in ev if isinstance(e, StepDone)) > 2  # really batched
    engine.close()


def test_the_any_time_sweep_is_one_batched_run(pipelines):
    engine = Engine(max_batch=16)
    sweep = [request(pipelines, loops=L, seed=2) for L in range(1, 6)]
    tickets = engine.submit_all(sweep)
    for t in tickets:
        final(t)
    assert engine.model_calls == sweep[0].sampler.steps  # five loop counts, one model call per step
    engine.close()


def test_one_at_a_time_when_max_batch_is_one(pipelines):
    engine = Engine(max_batch=1)
    tickets = [engine.submit(request(pipelines, seed=s)) for s in range(3)]
    events = [final(t) for t in tickets]
    assert {e.batch_rows for ev in events for e in ev if isinstance(e, StepDone)} == {1}
    assert any(isinstance(e, Queued) and e.ahead > 0 for e in events[2])  # the third saw a line
    engine.close()


def test_a_cancelled_request_leaves_and_the_others_finish(pipelines):
    engine = Engine(max_batch=8)
    slow = request(pipelines, seed=1, steps=12)
    stays, leaves = engine.submit(slow), engine.submit(request(pipelines, seed=2, steps=12))
    for event in leaves.events(timeout=60):
        if isinstance(event, StepDone) and event.step == 2:
            leaves.cancel()
    events = final(stays)
    assert agreement(events[-1].tokens, alone(slow)) >= 0.99
    late = [e.batch_rows for e in events if isinstance(e, StepDone)][-3:]
    assert late == [1, 1, 1]  # the cancelled one left the batch
    engine.close()


def test_a_failing_batch_fails_only_its_requests_and_the_worker_serves_on(pipelines, monkeypatch):
    engine = Engine(max_batch=8)
    p = pipelines["tiny-vanilla"]
    original = p.logits_fn
    monkeypatch.setattr(p, "logits_fn", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    bad = engine.submit(request(pipelines, "tiny-vanilla"))
    good = engine.submit(request(pipelines, "tiny-elt"))
    events = list(bad.events(timeout=60))
    assert isinstance(events[-1], Failed) and "out of memory" in events[-1].message
    final(good)
    monkeypatch.setattr(p, "logits_fn", original)
    final(engine.submit(request(pipelines, "tiny-vanilla")))  # the worker is still serving
    engine.close()


def test_a_full_line_is_refused_with_a_wait_estimate(pipelines):
    engine = Engine(max_batch=1, max_waiting=1)
    gate, started = threading.Event(), threading.Event()
    p = pipelines["tiny-elt"]
    original = p.logits_fn

    def slow_fn(*args, **kwargs):
        started.set()
        gate.wait(30)
        return original(*args, **kwargs)

    p.logits_fn = slow_fn
    try:
        first = engine.submit(request(pipelines))
        assert started.wait(30)  # the first one is running: the line holds one more
        second = engine.submit(request(pipelines, seed=1))
        with pytest.raises(Busy, match=r"try again in ~\d+ s"):
            engine.submit(request(pipelines, seed=2))
    finally:
        gate.set()
        p.logits_fn = original
    final(first), final(second)
    engine.close()


def test_bad_requests_are_refused_at_submit(pipelines):
    engine = Engine()
    with pytest.raises(ValueError, match="loops must be >= 1"):
        engine.submit(request(pipelines, loops=0))
    with pytest.raises(ValueError, match="samples with a"):
        engine.submit(BatchRequest(pipelines["tiny-dit-elt"], "x", (1,), 2, pipelines["tiny-elt"].sampler(), 0))
    guided_from_2 = replace(pipelines["tiny-dit-elt"].sampler(), guide_loop=2)
    with pytest.raises(ValueError, match="loop guidance from loop 2 needs more loops than that; got 2 loops"):
        engine.submit(BatchRequest(pipelines["tiny-dit-elt"], "x", (1,), 2, guided_from_2, 0))
    engine.close()


def test_in_the_app_a_refused_or_stopped_visitor_never_fails_the_others(tiny_checkpoints):
    from app.service import Final, Step, Stopped, Studio, StudioError

    studio = Studio([tiny_checkpoints["tiny-elt"].parent], max_batch=8)
    try:
        kept = studio.generate("tiny-elt", 1, 2, 8, 2.0, 0)
        stop = threading.Event()
        stopped = studio.generate("tiny-elt", 2, 3, 8, 2.0, 1, stop=stop)
        first = next(kept)  # both are in the batch
        assert isinstance(next(stopped), Step)
        with pytest.raises(StudioError, match="unknown class"):
            studio.generate("tiny-elt", "no such class", 2, 8, 2.0, 2)  # refused alone, at once
        stop.set()
        assert isinstance(list(stopped)[-1], Stopped)
        events = [first, *kept]
        assert isinstance(events[-1], Final) and [e.step for e in events[:-1]] == list(range(1, 9))
        # the settled stream equals a run alone with the same settings
        alone = studio.generate("tiny-elt", 1, 2, 8, 2.0, 0)
        assert (list(alone)[-1].pixels == events[-1].pixels).mean() > 0.99
        sweep = list(studio.sweep("tiny-elt", 1, 4, 2.0, 0))
        assert [t.loops for t in sweep if hasattr(t, "loops")] == [1, 2, 3, 4, 5]
        assert studio.engine.model_calls > 0
    finally:
        studio.close()


def test_the_app_benchmarks_read_every_update_and_never_hang_on_a_broken_stream():
    from conftest import load_script

    bench = load_script("bench_app")  # bench_serving's visitors read through the same `updates`
    assert load_script("bench_serving").updates is bench.updates

    class FakeJob:  # the part of gradio_client's Job the benchmarks read
        def __init__(self, outputs, finished, error=None):
            self._outputs, self._finished, self._error, self.cancelled = outputs, finished, error, False

        def outputs(self):
            return list(self._outputs)

        def done(self):
            return self._finished

        def exception(self):
            return self._error

        def cancel(self):
            self.cancelled = True

    assert list(bench.updates(FakeJob([1, 2, 3], finished=True), timeout=1)) == [1, 2, 3]
    with pytest.raises(ConnectionError):
        list(bench.updates(FakeJob([1], finished=True, error=ConnectionError("stream broke")), timeout=1))
    stuck = FakeJob([1], finished=False)  # what hung the benchmark: no FINISHED status, ever
    with pytest.raises(TimeoutError, match="no final image"):
        list(bench.updates(stuck, timeout=0.05))
    assert stuck.cancelled


def test_previews_are_paced_by_time_and_every_request_still_gets_three(pipelines):
    # a screen-pace interval longer than the whole run: only the guaranteed previews are decoded
    engine = Engine(max_batch=8, preview_interval=60.0)
    events = final(engine.submit(request(pipelines, steps=9)))
    shown = [e.step for e in events if isinstance(e, StepDone) and e.predicted is not None]
    assert shown == [1, 3, 6]  # the first step, then a third and two thirds of the way
    engine.close()
    every = Engine(max_batch=8, preview_interval=0.0)  # 0: a preview at every step
    events = final(every.submit(request(pipelines, steps=5)))
    assert [e.step for e in events if isinstance(e, StepDone) and e.predicted is not None] == [1, 2, 3, 4]
    every.close()


def test_every_loop_is_computed_only_in_steps_that_read_it(pipelines, monkeypatch):
    p = pipelines["tiny-elt"]
    asked, original = [], p.logits_fn
    def logits_fn(loops, all_loops=False, *args, **kw):
        asked.append(all_loops)
        return original(loops, all_loops, *args, **kw)

    monkeypatch.setattr(p, "logits_fn", logits_fn)
    engine = Engine(max_batch=8)
    quiet = replace(request(pipelines, seed=4, steps=6), previews=False)  # a sweep tile: its final image only
    events = final(engine.submit(quiet))
    assert asked == [False] * 6 and all(e.loop_tokens is None for e in events if isinstance(e, StepDone))
    assert torch.equal(events[-1].tokens, alone(quiet))  # the last loop alone: the same call as Pipeline.stream's
    asked.clear()
    events = final(engine.submit(request(pipelines, seed=4, steps=6)))  # previews: the strip and the settle view
    assert asked == [True] * 6 and all(e.loop_tokens.shape[0] == 2 for e in events if isinstance(e, StepDone))
    asked.clear()
    tickets = engine.submit_all([quiet, replace(quiet, loops=3)])  # elastic rows read their own loop
    for t in tickets:
        final(t)
    assert asked == [True] * 6
    engine.close()


def test_the_engine_benchmark_puts_the_engine_beside_the_model(pipelines, monkeypatch):
    from conftest import load_script

    bench = load_script("bench_engine")
    monkeypatch.setattr(bench, "CONCURRENT", 3)
    p = pipelines["tiny-elt"]
    rows = bench.measure(p, "tiny-elt", 1, 2, p.sampler(6), seconds=0.01, preview_hz=1000.0, rounds=1)
    assert [r.name for r in rows][:2] == ["one at a time (Pipeline.generate, batch 1)",
                                          "the model's own batch of 3 (no previews)"]
    assert len(rows) == 6 and all(r.images >= 1 and r.rate > 0 for r in rows)
    assert [r.fewest_previews is not None for r in rows[2:]] == [True, False, True, False]
    assert min(r.fewest_previews for r in rows[2::2]) >= 3  # each request's previews before its final image
    assert "× batched ceiling" in bench.table([("tiny", 1, "0.00", rows)])
