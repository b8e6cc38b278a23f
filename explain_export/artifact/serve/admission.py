"""What bounds a replica's memory in all, and its answer times: admission, slots, a deadline.

A request's memory is bounded by the caps of :mod:`..images` (the pixel cap from the header, the
image decoded no larger than ``--max-overlay-side``). :class:`Admission` bounds how many such
requests a replica holds, and how many of them are decoded or drawn at once:

- at most ``max_decoding`` threads decode (and fit) or draw (map back, blend, encode) at once:
  :meth:`Admission.run`. These steps are CPU-bound, so more threads than the replica has CPUs
  add memory (a decode of the largest allowed image holds its full size for a moment) but no
  throughput. A slot is freed when its thread ends, even where the request was dropped first.
- at most ``max_decoding + max_queued`` requests are in the replica at once (reading their
  body, waiting for a slot or a batch, in the model, being drawn): one more is answered 503
  with ``Retry-After`` at once, before its body is read (:meth:`Admission.admit`). Each held
  request keeps its body until decoded, then its decoded image (at most ``max_overlay_side``
  on the longer side) until drawn.
- a request that runs past ``timeout_s`` is answered 504 (:meth:`Admission.within`); what it
  had not started is dropped (a thread that runs finishes, its result unused; the model batch
  it joined still runs).

Plain asyncio: no Ray, no model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .request import RequestError

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_TIMEOUT_S", "RETRY_AFTER_S", "Admission", "busy"]

DEFAULT_MAX_QUEUED = 32  # requests a replica holds beyond those it decodes or draws
DEFAULT_TIMEOUT_S = 60.0  # a request still unanswered after this gets 504
RETRY_AFTER_S = 1  # the Retry-After of a 503: about the time one batch takes on a CPU

T = TypeVar("T")


def busy(held: int, max_queued: int) -> RequestError:
    """The 503 for a replica that holds ``held`` requests, its most."""
    return RequestError(
        503,
        f"the server is busy: this replica holds {held} requests, its most (--max-queued "
        f"{max_queued}); retry after {RETRY_AFTER_S} s, or run more --replicas",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


class Admission:
    """A replica's admission control (see the module's text). Made and used on one event
    loop; :meth:`run`'s threads are the loop's default executor's."""

    def __init__(self, max_decoding: int, max_queued: int, timeout_s: float | None) -> None:
        if max_decoding < 1 or max_queued < 0:
            raise ValueError("max_decoding must be at least 1 and max_queued at least 0")
        self.max_decoding, self.max_queued, self.timeout_s = max_decoding, max_queued, timeout_s
        self.limit = max_decoding + max_queued
        self.held = 0  # requests admitted and not yet answered
        self.working = 0  # threads decoding or drawing
        self._slots: asyncio.Semaphore | None = None

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one request for the ``with`` block; :class:`RequestError` 503 where the replica
        holds its most already."""
        if self.held >= self.limit:
            raise busy(self.held, self.max_queued)
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread, once one of the ``max_decoding`` slots is free. Where the
        caller is cancelled (its deadline passed), the thread still holds its slot until it
        ends, so no more than ``max_decoding`` ever run."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_decoding)
        slots = self._slots
        await slots.acquire()
        self.working += 1

        def done(_future: Any) -> None:
            self.working -= 1
            slots.release()

        try:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, functools.partial(fn, *args))
        except BaseException:
            done(None)
            raise
        future.add_done_callback(done)
        return await asyncio.shield(future)

    async def within(self, work: Awaitable[T]) -> T:
        """``work``, or :class:`RequestError` 504 once it runs past ``timeout_s`` (``work`` is
        cancelled: what it had not started never runs)."""
        if self.timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            raise RequestError(
                504,
                f"the request ran past {self.timeout_s:g} s (--request-timeout) and was "
                "dropped; retry later, or raise --request-timeout",
            ) from None
