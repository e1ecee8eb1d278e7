"""Overload control: past its knee a worker takes the calls it can and refuses the rest at once.

Sans-IO. The worker reports how late it runs (`beat(now, lag)`, every few ms: its event loop's
lateness or the longest a datagram waited in a socket's queue, whichever is worse) and every new
call asks `admit(now, waited)`. Two rules, each enough alone for a part of the load:

* While the worker is behind, an INVITE that has already waited more than TARGET·`bound` in a
  queue is refused at once: its caller has waited long enough, and refusing the stale ones is
  how a queue of seconds empties in milliseconds and keeps every 503 prompt. (Not before: an
  INVITE delayed by a burst or a moment's hiccup, another process on the core, is a call like
  any other.)
* While the worker keeps up, every call is admitted. When the smoothed lag has stayed over
  `bound` for SUSTAIN it is "behind": admission becomes a token bucket at a little under the
  rate of new calls offered over the last second, cut by DECREASE each STEP while the lag stays
  over TARGET·`bound`, and raised by a tenth of the offered rate each STEP once it is back
  under half that (so it is back to normal within 3 s of catching up, however low it had to
  go); the limit is lifted when it has grown past what is offered (a multiplicative decrease
  and an additive increase, as TCP does with its window). It enters after SUSTAIN over
  `bound` (at once past FAR·`bound`), if the worker is still behind at that moment (a stall of
  a few hundred ms leaves a backlog the smoothed lag remembers after it is read), but steers to
  half of it: a burst of INVITEs or a loop some tens of milliseconds late for a moment
  (another process on the core, a collector pass) is no reason to refuse a call, while once
  behind the queues are kept short, so a refused call hears so at once. This rule also covers
  calls over TCP and TLS, whose queues the worker cannot date.

A refused call costs a parse and a stateless 503: cheap enough that refusing the excess keeps
the worker on time, so the refused get their 503 at once and the admitted calls keep the
relay's time.
"""

from __future__ import annotations

from collections import deque

TARGET = 0.5  # of `bound`: the smoothed lag the token bucket steers to once behind
SMOOTHING = 0.1  # EWMA weight of one beat's lag: one spike of a burst does not trip it
STEP = 0.25  # seconds between two changes of the admitted rate
DECREASE = 0.85
INCREASE = 0.1  # of the offered rate, per STEP
WINDOW = 1.0  # seconds of new calls that make the "offered" rate
BURST = 0.05  # seconds of the admitted rate the bucket may hold
SUSTAIN = 0.5  # seconds the smoothed lag stays over `bound` before the worker is behind ...
FAR = 6.0  # ... unless it passes FAR·`bound`: a backlog growing that fast is no hiccup


class OverloadControl:
    def __init__(self, bound: float) -> None:
        self.bound = bound  # seconds of smoothed lag that mean "behind"
        self.lag = 0.0  # smoothed
        self.rate: float | None = None  # admitted calls/s; None: no limit
        self._tokens = 0.0
        self._filled = 0.0
        self._changed = -1e9
        self._arrivals: deque[float] = deque()
        self._over_since: float | None = None  # when the smoothed lag went over `bound`

    @property
    def active(self) -> bool:
        return self.rate is not None

    def offered_rate(self, now: float) -> float:
        arrivals = self._arrivals
        while arrivals and arrivals[0] <= now - WINDOW:
            arrivals.popleft()
        return len(arrivals) / WINDOW

    def beat(self, now: float, lag: float) -> str | None:
        """One heartbeat of the event loop, `lag` s late. "on"/"off" when control starts or
        ends (for the log), else None."""
        self.lag += SMOOTHING * (lag - self.lag)
        if now - self._changed < STEP:
            return None
        if self.rate is None:
            if self.lag <= self.bound:
                self._over_since = None
            elif self._over_since is None:
                self._over_since = now
            elif lag > self.bound and (
                now - self._over_since >= SUSTAIN or self.lag > FAR * self.bound
            ):  # still behind now, not a backlog left by a stall and already read
                self._over_since = None
                self._changed = now
                self.rate = max(1.0, DECREASE * self.offered_rate(now))
                self._tokens = 0.0  # it is behind already: nothing banked
                self._filled = now
                return "on"
        elif self.lag > self.bound * TARGET:
            self._changed = now
            self.rate = max(1.0, self.rate * DECREASE)
        elif self.lag < self.bound * TARGET / 2:
            self._changed = now
            offered = self.offered_rate(now)
            self.rate += max(1.0, INCREASE * offered)
            if self.rate > offered * 1.2:
                self.rate = None
                return "off"
        return None

    def admit(self, now: float, waited: float = 0.0) -> bool:
        """A new call arrives, after `waited` s in a socket queue: True to take it, False to
        refuse it now (503)."""
        arrivals = self._arrivals
        arrivals.append(now)
        # only the last WINDOW is kept (offered_rate is asked only while behind: trimming there
        # alone let a worker that never fell behind hold its last 100,000 arrivals, 3 MB)
        while arrivals[0] <= now - WINDOW or len(arrivals) > 100_000:
            arrivals.popleft()
        if self.rate is not None and waited > self.bound * TARGET:
            return False  # behind, and this one waited too long already
        rate = self.rate
        if rate is None:
            return True
        self._tokens = min(max(1.0, rate * BURST), self._tokens + (now - self._filled) * rate)
        self._filled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
