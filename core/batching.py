"""Batched, elastic serving: many visitors' requests share one model call per sampling step.

Gradio's own batching (`batch=True`, `max_batch_size`) is not used: it closes a batch when the function
starts and keeps it to the end, so a request arriving during a 16-step generation waits for the whole
run, every member must stream in lockstep through one generator, and one visitor's Stop or error would end
the others'.  So the server batches per sampling step instead (continuous batching, as text-generation
servers do):

- a request joins its checkpoint's running batch at the next step boundary and leaves it when done,
  stopped or disconnected; one worker thread runs a step of each checkpoint's batch in turn;
- every row keeps its own class, seed (its own random generator), guidance, step count and loop count
  (core.sampling's per-row samplers), so an image never depends on who it was batched with;
- elastic loops: the batch runs to the largest L asked for and each row reads its prediction at its own
  loop, since one pass yields every loop (the in-step loop strip comes from the same pass);
- previews are decoded in one tokenizer call per step for every request that gets one, paced by time, not
  by steps: at most one per `preview_interval` per request (a screen shows about ten frames a second), and
  under load no more often than keeps preview decoding to `preview_share` of the worker's time; every
  request still gets its first step and at least three previews before its final image, and none is
  decoded when the final image will replace it sooner than a screen would show it;
- the model computes every loop's prediction only in steps that read it (rows at different loop counts,
  loop guidance, a preview's loop strip, the settle view of a request with previews); otherwise a step
  costs what the model's own batch costs.

`Engine(max_batch=1)` serves one request at a time, the behaviour before batching (kept for comparison).
No Gradio here: app/service.py turns a ticket's events into what the page shows.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from core.pipeline import Pipeline, step_timings
from core.sampling import DiffusionSamplerConfig, SamplerConfig


class Busy(RuntimeError):
    """The waiting line is full; the message says roughly when to try again."""


@dataclass(frozen=True)
class BatchRequest:
    """What one visitor's run asks of the engine: rows of one checkpoint, their own seed, loops and sampler."""

    pipeline: Pipeline
    key: str  # requests with the same key (one checkpoint, one pipeline) may share a batch
    labels: tuple[int, ...]  # one row per sample
    loops: int
    sampler: SamplerConfig | DiffusionSamplerConfig
    seed: int
    previews: bool = True  # decode previews and the settle view's loop tokens (a sweep's tiles show only their final image)


# -- what a ticket yields ---------------------------------------------------------------------------------
@dataclass
class Queued:
    ahead: int  # requests ahead of this one in the waiting line


@dataclass(kw_only=True)  # built by keyword: a new field cannot shift the others
class StepDone:
    """A sampling step done (the last one too, then Done follows with the result)."""

    step: int
    steps: int
    predicted: np.ndarray | None  # uint8 (n, [T,] H, W, 3) this step's full prediction, when previewed
    loop_pixels: np.ndarray | None  # uint8 (L, [T,] H, W, 3) each loop's prediction of the first sample, when previewed
    loop_tokens: torch.Tensor | None  # (L, T) first sample's argmax per loop (token families, with previews), for the settle view
    before: torch.Tensor  # first sample's tokens (or latent) before this step
    batch_rows: int  # rows in the model call
    loop_ms: list[float]  # the batch's model time per loop up to this request's L, embedding and head
    embed_ms: float
    head_ms: float
    beyond_ms: float  # loops the batch ran past this request's L (for deeper rows): waited, not its own cost
    stride: int = 1  # under load previews go to about every stride-th step (1: not thinned by load)

    @property
    def own_ms(self) -> float:
        """The model time of this step at this request's L."""
        return self.embed_ms + sum(self.loop_ms) + self.head_ms


@dataclass
class Done:
    tokens: torch.Tensor  # (n, …) final tokens or latents
    pixels: np.ndarray  # uint8 (n, [T,] H, W, 3)
    decode_ms: float  # the batch's tokenizer decode of this step (previews and finals)


@dataclass
class Failed:
    message: str


class Ticket:
    """One submitted request: iterate `events()`; `cancel()` makes it leave its batch at the next step."""

    def __init__(self, request: BatchRequest, engine: "Engine"):
        self.request, self._engine = request, engine
        self._events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self._engine._wake()

    def events(self, timeout: float | None = None) -> Iterator[Queued | StepDone | Done | Failed]:
        """Every event of this request, ending with Done or Failed (or nothing more once cancelled)."""
        while not self.cancelled.is_set():
            try:
                event = self._events.get(timeout=0.25 if timeout is None else timeout)
            except queue.Empty:
                if timeout is not None:
                    raise TimeoutError("no event from the model worker") from None
                continue
            yield event
            if isinstance(event, (Done, Failed)):
                return

    def _put(self, event: Any) -> None:
        self._events.put(event)


@dataclass
class _Member:
    ticket: Ticket
    generator: torch.Generator  # shared by the request's rows, drawn row by row: as the request alone
    rows: int
    step: int = 0
    last_preview: float = -math.inf  # when its last preview was decoded (time.monotonic)
    shown: int = 0  # previews sent before its final image


@dataclass
class _Batch:
    pipeline: Pipeline
    members: list[_Member] = field(default_factory=list)
    rows: Any = None  # MaskGITRows | DiffusionRows
    labels: torch.Tensor | None = None
    loops: torch.Tensor | None = None
    step_seconds: float | None = None  # recent wall time of one step (model call, previews, events)
    preview_seconds: float | None = None  # recent decode time of one request's preview (image and loop strip)

    @property
    def size(self) -> int:
        return 0 if self.labels is None else len(self.labels)

    def generators(self) -> list[torch.Generator]:
        return [m.generator for m in self.members for _ in range(m.rows)]


class Engine:
    """The model worker: one thread owns the model calls; requests come and go between steps.

    max_batch: rows per model call (1 = one request at a time, as before batching); max_waiting: requests
    that may wait for a place, beyond which `submit` raises Busy; preview_interval: seconds between two
    previews of one request at least (a browser cannot show them faster, so none is decoded only to be
    dropped; 0: a preview at every step); preview_share: the part of the worker's time that preview
    decoding may take when many requests want previews (their interval grows instead).
    """

    MIN_PREVIEWS = 3  # previews before the final image that every request gets, however busy the worker
    STREAM_EVERY_STEP = 6  # requests served up to which StepDone.stride stays 1

    def __init__(self, max_batch: int = 32, max_waiting: int = 64, *, preview_interval: float = 0.0,
                 preview_share: float = 0.1):
        if max_batch < 1 or max_waiting < 0 or preview_interval < 0 or not 0 < preview_share <= 1:
            raise ValueError("max_batch must be >= 1, max_waiting and preview_interval >= 0, "
                             "0 < preview_share <= 1")
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.preview_interval, self.preview_share = preview_interval, preview_share
        self.model_calls = 0  # forward passes run (a test can check that something did or did not run)
        self._waiting: deque[Ticket] = deque()
        self._batches: dict[str, _Batch] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._finished: deque[float] = deque(maxlen=64)  # finish times: the recent throughput for Busy's estimate
        self._thread: threading.Thread | None = None

    # -- the caller's side ------------------------------------------------------------------------------
    def submit(self, request: BatchRequest) -> Ticket:
        return self.submit_all([request])[0]

    def submit_all(self, requests: list[BatchRequest]) -> list[Ticket]:
        """Queue requests together (e.g. a sweep's loop counts): they join the same step, so a sweep is one
        batched run.  Busy if the line is full; ValueError for a request no model can run."""
        for request in requests:
            p = request.pipeline
            if request.loops < 1:
                raise ValueError(f"loops must be >= 1, got {request.loops}")
            if not isinstance(request.sampler, p.family.sampler_type):
                raise ValueError(f"a {p.family.name} checkpoint samples with a {p.family.sampler_type.__name__}")
            if getattr(request.sampler, "guide_loop", 0):
                request.sampler.check_loops(request.loops)  # ConfigError, a ValueError
        tickets = [Ticket(request, self) for request in requests]
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._waiting) + len(tickets) > self.max_waiting and self._busy_rows() >= self.max_batch:
                raise Busy(f"the server is busy ({len(self._waiting)} requests waiting); "
                           f"try again in ~{self._wait_estimate():.0f} s")
            for ticket in tickets:
                self._waiting.append(ticket)
                ticket._put(Queued(len(self._waiting) - 1))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
                self._thread.start()
            self._lock.notify()
        return tickets

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, fail the waiting ones, let the running step finish, and stop the worker."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)  # a daemon thread killed inside a torch op at exit aborts the process

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def _busy_rows(self) -> int:
        return sum(b.size for b in self._batches.values())

    def _wait_estimate(self) -> float:
        """Seconds until a place frees up, from the recent finish rate (2 s per request before any finished)."""
        recent = [t for t in self._finished if t > time.monotonic() - 30]
        rate = len(recent) / max(time.monotonic() - recent[0], 1.0) if len(recent) > 1 else 0.5
        return max(1.0, (len(self._waiting) + 1) / rate)

    # -- the worker -----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._admit():
                    self._lock.wait()
                if self._closed:
                    running = [m.ticket for b in self._batches.values() for m in b.members]
                    for ticket in [*self._waiting, *running]:
                        ticket._put(Failed("the server is shutting down"))
                    return
                batches = [b for b in self._batches.values() if b.size]
            for batch in batches:  # one step of each checkpoint's batch in turn
                self._step(batch)

    def _admit(self) -> bool:
        """Move waiting requests into their checkpoint's batch while rows are free (first come, first
        served per checkpoint); drop cancelled ones.  True if any batch has work.  Holds the lock."""
        still: deque[Ticket] = deque()
        for ticket in self._waiting:
            if ticket.cancelled.is_set():
                continue
            req = ticket.request
            batch = self._batches.setdefault(req.key, _Batch(req.pipeline))
            n = len(req.labels)
            # one request at a time overall when max_batch is 1; otherwise up to max_batch rows per checkpoint
            full = self._busy_rows() > 0 if self.max_batch == 1 else batch.size and batch.size + n > self.max_batch
            if full or any(t.request.key == req.key for t in still):  # first come, first served
                still.append(ticket)
            else:
                self._join(batch, ticket)
        if len(still) < len(self._waiting):  # the line moved: tell each one waiting its new place
            for ahead, ticket in enumerate(still):
                ticket._put(Queued(ahead))
        self._waiting = still
        for key in [k for k, b in self._batches.items() if not b.size]:
            del self._batches[key]
        return bool(self._batches)

    @staticmethod
    def _join(batch: _Batch, ticket: Ticket) -> None:
        req, p = ticket.request, ticket.request.pipeline
        device = p.runtime.device
        member = _Member(ticket, p.runtime.generator(req.seed), len(req.labels))
        rows = p.family.rows_init(p.config, [req.sampler] * member.rows, [member.generator] * member.rows, device)
        labels = torch.tensor(req.labels, dtype=torch.long, device=device)
        loops = torch.full((member.rows,), req.loops, dtype=torch.long, device=device)
        if batch.size:
            rows = type(rows).concat([batch.rows, rows])
            labels, loops = torch.cat([batch.labels, labels]), torch.cat([batch.loops, loops])
        batch.rows, batch.labels, batch.loops = rows, labels, loops
        batch.members.append(member)

    def _step(self, batch: _Batch) -> None:
        p = batch.pipeline
        try:
            started = time.monotonic()
            with self._lock:
                serving = sum(len(b.members) for b in self._batches.values()) + len(self._waiting)
            plan = [self._plan(batch, m, started, serving) for m in batch.members]
            every_loop = self._reads_every_loop(batch, plan)
            before = batch.rows.tokens.cpu()
            timer = p.runtime.timer()
            fn = p.logits_fn(int(batch.loops.max()), all_loops=every_loop, mark=timer.mark)
            loops = batch.loops
            if not every_loop:  # every row reads the last loop: the rows step takes it as a one-loop stack
                fn, loops = _one_loop(fn), torch.ones_like(loops)
            timer.mark("start")
            with torch.inference_mode():
                rows, predicted, every = p.family.rows_step(p.config, batch.rows, fn, batch.labels, loops,
                                                            batch.generators())
            timer.mark("head")
            self.model_calls += 1
            loop_ms, embed_ms, head_ms = step_timings(timer)
            self._publish(batch, plan, rows, predicted, every, before, (loop_ms, embed_ms, head_ms), serving)
            elapsed = time.monotonic() - started
            batch.step_seconds = elapsed if batch.step_seconds is None else 0.7 * batch.step_seconds + 0.3 * elapsed
        except Exception as error:  # a failed step fails its own batch only; the worker serves on
            traceback.print_exc(file=sys.stderr)
            for member in batch.members:
                member.ticket._put(Failed(f"generation failed: {error}"))
            batch.members, batch.rows, batch.labels, batch.loops = [], None, None, None

    def _preview_interval(self, batch: _Batch, serving: int) -> float:
        """Seconds between two previews of one request now: the screen's pace, or longer when the previews of
        everyone being served would take more than preview_share of the worker's time."""
        if batch.preview_seconds is None:
            return self.preview_interval
        return max(self.preview_interval, serving * batch.preview_seconds / self.preview_share)

    def _plan(self, batch: _Batch, m: _Member, now: float, serving: int) -> str:
        """What member m's next step sends: "done" (its final image), "preview" or "step"."""
        req, step = m.ticket.request, m.step + 1
        steps = req.sampler.steps
        if step >= steps:
            return "done"
        if not req.previews or m.ticket.cancelled.is_set():
            return "step"
        if step == 1 or self.preview_interval == 0:
            return "preview"
        if m.shown < self.MIN_PREVIEWS and step * self.MIN_PREVIEWS >= m.shown * steps:
            return "preview"  # spread over the run: step 1, a third of the way, two thirds
        if batch.step_seconds is not None and (steps - step) * batch.step_seconds < self.preview_interval:
            return "step"  # the final image comes before a screen would show this one
        return "preview" if now - m.last_preview >= self._preview_interval(batch, serving) else "step"

    @staticmethod
    def _reads_every_loop(batch: _Batch, plan: list[str]) -> bool:
        """Does this step need every loop's prediction: rows at different loop counts, loop guidance, a loop
        strip, or the settle view (a token family's loop tokens for a request with previews)?"""
        if bool(batch.loops.min() != batch.loops.max()) or "preview" in plan:
            return True
        guide_loop = getattr(batch.rows, "guide_loop", None)
        if guide_loop is not None and bool((guide_loop > 0).any()):
            return True
        return batch.pipeline.family.discrete and any(m.ticket.request.previews for m in batch.members)

    def _publish(self, batch: _Batch, plan: list[str], rows, predicted, every, before, timings, serving) -> None:
        """Decode what this step shows (one tokenizer call), send each member its event, drop who left."""
        p = batch.pipeline
        parts, spans, start, now = [], [], 0, time.monotonic()  # tensors to decode; each member's rows
        preview_rows = 0
        for m, kind in zip(batch.members, plan):
            m.step += 1
            spans.append((slice(start, start + m.rows), len(parts)))
            start += m.rows
            req = m.ticket.request
            if kind == "done":
                parts.append(rows.tokens[spans[-1][0]])
            elif kind == "preview":
                m.last_preview, m.shown = now, m.shown + 1
                first = spans[-1][0].start
                # (L, …) each loop's prediction of the request's first sample
                strip = p.family.loop_preview(p.config, every[:req.loops, first], before[first])
                parts += [predicted[spans[-1][0]], strip.to(predicted.device)]
                preview_rows += m.rows + len(strip)
        t0 = time.perf_counter()
        sizes = [len(x) for x in parts]
        pixels = np.split(p.decode(torch.cat(parts)), np.cumsum(sizes)[:-1]) if parts else []
        decode_s = time.perf_counter() - t0
        previewed = plan.count("preview")
        if previewed:  # this step's decode time per preview, the finals' rows counted alike
            cost = decode_s * preview_rows / max(sum(sizes), 1) / previewed
            batch.preview_seconds = cost if batch.preview_seconds is None else 0.7 * batch.preview_seconds + 0.3 * cost
        interval, step_s = self._preview_interval(batch, serving), batch.step_seconds
        # under load the app streams only the steps with images; with a few requests, every step
        stride = 1 if serving <= self.STREAM_EVERY_STEP or not step_s else max(1, math.ceil(interval / step_s))
        keep = torch.ones(batch.size, dtype=torch.bool)
        members = []
        loop_ms, embed_ms, head_ms = timings
        for m, kind, (span, at) in zip(batch.members, plan, spans):
            req = m.ticket.request
            loop_tokens = (every[:req.loops, span.start].cpu()
                           if p.family.discrete and req.previews and len(every) >= req.loops else None)
            shown = kind == "preview"
            m.ticket._put(StepDone(step=m.step, steps=req.sampler.steps, predicted=pixels[at] if shown else None,
                                   loop_pixels=pixels[at + 1] if shown else None, loop_tokens=loop_tokens,
                                   before=before[span.start], batch_rows=batch.size, loop_ms=loop_ms[:req.loops],
                                   embed_ms=embed_ms, head_ms=head_ms, beyond_ms=sum(loop_ms[req.loops:]),
                                   stride=stride))
            if kind == "done":
                m.ticket._put(Done(rows.tokens[span].cpu(), pixels[at], decode_s * 1e3))
                self._finished.append(time.monotonic())
            if kind == "done" or m.ticket.cancelled.is_set():
                keep[span] = False
            else:
                members.append(m)
        batch.members = members
        if members and bool(keep.all()):
            batch.rows = rows  # nobody left: no copy of every row's state
        elif members:
            keep = keep.to(batch.labels.device)
            batch.rows, batch.labels, batch.loops = rows.select(keep), batch.labels[keep], batch.loops[keep]
        else:
            batch.rows, batch.labels, batch.loops = None, None, None


def _one_loop(fn):
    """A last-loop model function as an every-loop one with a single loop: (B, …) -> (1, B, …)."""
    return lambda *args: fn(*args)[None]
