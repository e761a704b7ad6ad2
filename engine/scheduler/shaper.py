"""Put paced requests on the wire on the limiter's schedule, not whenever their commit finished.

Between the rate limiter's release and the send, the dispatcher makes the attempt durable (a
group commit: a few milliseconds, varying with the disk). Sending straight after the commit
would carry that jitter to the provider, whose sliding window then sees two sends closer than
the paced interval and answers 429. The shaper gives each release an ideal slot (one interval
after the previous slot, or the release itself after an idle spell) and holds the send until
that slot plus a fixed lag longer than a typical commit, so sends keep the interval exactly.

A commit longer than the lag (the run's first one, which creates the log; a slow disk) makes its
sends late. Were the sends after them to keep their slots, they would follow closer than the
interval, and the window ending a second later would hold one request too many: the provider
answers 429 (one in every paced run started this way). So a send later than its slot by more than
the tolerance moves the schedule: every send claimed after it goes out that much later too, as a
late release starts the schedule afresh. Lateness within the tolerance keeps the slots; for that
the shaper keeps the provider's own rule on actual send times: never more than the limit's share
of a one-second window (OpenAI enforces "6000 RPM" as 100 per second) in any such window, less a
margin for the wire. On schedule that bound never binds: pacing below the limit leaves slack.
"""

from __future__ import annotations

import math
from collections import deque

import anyio

__all__ = ["SendShaper"]

# Sends go out this long after their slot: longer than a typical durable commit, short next to
# any provider's latency.
SEND_LAG_S = 0.025
# A release later than its ideal slot by up to this much keeps the slot (no drift from a busy
# event loop); a later one starts the schedule afresh at the release.
_TOLERANCE_S = 0.010
# The window a per-minute limit is assumed to be enforced over.
WINDOW_S = 1.0


class SendShaper:
    """Per-endpoint send spacing for a request-rate limit of `rpm` paced at `safety` of it."""

    def __init__(self, rpm: float, safety: float) -> None:
        # The send times of the last `per_window` sends: the oldest bounds the next one.
        self._sent: deque[float] = deque()
        self.set_limit(rpm)
        if not 0.0 < safety <= 1.0:
            raise ValueError(f"SendShaper: safety must be in (0, 1], got {safety!r}")
        self.interval_s = 60.0 / (rpm * safety)
        self._slot = -math.inf
        # How much later than their slots sends go out, after sends that were late beyond the
        # tolerance moved the schedule (slots stay on the limiter's clock; sends add this).
        self.shift_s = 0.0
        # A margin on the window for the wire's jitter between our send and the provider's clock:
        # four fifths of the slack pacing at `safety` leaves in it (4 ms at 99.5%), so the bound
        # stays off a schedule kept exactly.
        self.window_s = WINDOW_S + 0.8 * (1.0 - safety) / safety * WINDOW_S

    def set_interval(self, seconds: float) -> None:
        """Follow the limiter when its pace changes (a learned limit, a slower factor after 429s)."""
        if not seconds > 0 or math.isinf(seconds):
            raise ValueError(f"SendShaper: interval must be a positive finite number, got {seconds!r}")
        self.interval_s = seconds

    def set_limit(self, rpm: float) -> None:
        """A new request limit for the window rule (an inferred limit moves; see inferred.py)."""
        if not rpm > 0 or math.isinf(rpm):
            raise ValueError(f"SendShaper: rpm must be a positive finite number, got {rpm!r}")
        self.per_window = max(1, math.floor(rpm * WINDOW_S / 60.0))
        self._sent = deque(self._sent, maxlen=self.per_window)

    def slot(self, released_at: float) -> float:
        """Claim the send slot of a request the limiter released at loop time `released_at`.

        Call in release order, right after the release (before any await)."""
        self._slot = max(self._slot + self.interval_s, released_at - _TOLERANCE_S - self.shift_s)
        return self._slot

    async def wait(self, slot: float) -> None:
        """Sleep until `slot` + the lag (at once if the commit took longer than that), and until
        the window ending now has room; the caller sends straight after, so now is its send time."""
        while True:
            now = anyio.current_time()
            due = slot + SEND_LAG_S + self.shift_s  # the schedule may move while this one sleeps
            at = max(due, self._sent[0] + self.window_s) if len(self._sent) == self.per_window else due
            if at <= now:
                break
            await anyio.sleep(at - now)
        if now - due > _TOLERANCE_S:
            self.shift_s += now - due
        self._sent.append(now)
