"""Per-key budgets: tokens and cost a key may spend per window, reserved before a request runs, charged after.

Windows are `window_s` long and aligned to multiples of it, like the rate limiter's. A request reserves the most
it may spend (coe/budget_costs.py); it is refused (429) if the key's use plus what is reserved would pass a cap,
so requests admitted together, on any replica, cannot overspend it. When it ends, the reservation is released and
the real counts are charged: an answer's usage; nothing for a request that failed; the whole reservation for one
whose client left (its jobs may have run).

With Redis every API process books in one hash per key and window (`<prefix>:budget:<identity>:<window_s>:<n>`,
fields tokens, cost, rtokens, rcost; cost in nano-units), checked and reserved in one Lua script, expiring a
window after it ends. Without Redis the books are this process's. If Redis cannot be used the ledger lets
requests through unbooked and logs it (fail-open, as the rate limiter): the queue is on the same Redis and answers
503 then anyway, and accounting must never be why an accepted request is lost; `coe_budget_unbooked_total`
counts them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from coe import metrics
from coe.budget_costs import Charge
from coe.core.settings import BudgetLimits, Settings
from coe.pipeline_types import PipelineError

log = logging.getLogger("coe.budgets")

NANO = 1_000_000_000  # cost is booked in integer nano-units: Redis adds integers exactly

_RESERVE = """
local h = redis.call('HMGET', KEYS[1], 'tokens', 'cost', 'rtokens', 'rcost')
local used_t, used_c = tonumber(h[1]) or 0, tonumber(h[2]) or 0
local held_t, held_c = tonumber(h[3]) or 0, tonumber(h[4]) or 0
local cap_t, cap_c = tonumber(ARGV[3]), tonumber(ARGV[4])
local over = ''
if cap_t > 0 and used_t + held_t + tonumber(ARGV[1]) > cap_t then over = 'tokens'
elseif cap_c > 0 and used_c + held_c + tonumber(ARGV[2]) > cap_c then over = 'cost' end
if over == '' then
  held_t = redis.call('HINCRBY', KEYS[1], 'rtokens', ARGV[1])
  held_c = redis.call('HINCRBY', KEYS[1], 'rcost', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {over, used_t, used_c, held_t, held_c}
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'rtokens', -tonumber(ARGV[1]))
  redis.call('HINCRBY', KEYS[1], 'rcost', -tonumber(ARGV[2]))
end
redis.call('HINCRBY', KEYS[2], 'tokens', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'cost', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Books:
    """A key's window: used and reserved (tokens, cost in nano-units)."""

    tokens: int = 0
    cost: int = 0
    held_tokens: int = 0
    held_cost: int = 0


@dataclass(frozen=True)
class Window:
    index: int
    ends_at: float

    def resets_in(self) -> float:
        return max(0.0, self.ends_at - time.time())


@dataclass(frozen=True)
class Standing:
    """A key's budget in the current window."""

    identity: str
    limits: BudgetLimits
    window: Window
    books: Books

    @property
    def left_share(self) -> float:
        """The smallest share left of any cap (used and reserved both count)."""
        shares = [1.0]
        if self.limits.tokens:
            shares.append(1 - (self.books.tokens + self.books.held_tokens) / self.limits.tokens)
        if self.limits.cost:
            shares.append(1 - (self.books.cost + self.books.held_cost) / (self.limits.cost * NANO))
        return max(0.0, min(shares))


@dataclass(frozen=True)
class Ticket:
    """A reservation: what to release when its request ends (booked=False: admitted while Redis was unreachable)."""

    identity: str
    window_s: float
    index: int
    held: Charge
    booked: bool = True


class BudgetExceededError(PipelineError):
    """429 in OpenAI's format: the budget that would pass, and when it resets (also as Retry-After)."""

    status, type, code = 429, "rate_limit_error", "budget_exceeded"

    def __init__(self, standing: Standing, limit: str, wanted: Charge):
        self.standing, self.limit, self.wanted = standing, limit, wanted
        self.retry_after = max(1.0, math.ceil(standing.window.resets_in()))
        super().__init__(self._describe())

    def _describe(self) -> str:
        s, lim, w = self.standing, self.standing.limits, _fmt_window(self.standing.limits.window_s)
        if self.limit == "tokens":
            spent = s.books.tokens + s.books.held_tokens
            what = (f"Token budget of this key reached: {lim.tokens} tokens per {w}, {spent} used or reserved, and "
                    f"this request may need up to {self.wanted.tokens}")
        else:
            spent = (s.books.cost + s.books.held_cost) / NANO
            what = (f"Cost budget of this key reached: {lim.cost:g} per {w}, {spent:.6g} used or reserved, and "
                    f"this request may cost up to {self.wanted.cost:.6g}")
        resets = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.window.ends_at))
        return f"{what}; it resets in {self.retry_after:.0f}s ({resets}). Ask for fewer max_tokens, or wait."


def _observe(standing: Standing) -> None:
    """The key's books as last read, for coe_budget_used_ratio: the share of each cap used or reserved."""
    books, limits = standing.books, standing.limits
    if limits.tokens:
        metrics.BUDGET_USED.labels(standing.identity, "tokens").set((books.tokens + books.held_tokens) / limits.tokens)
    if limits.cost:
        metrics.BUDGET_USED.labels(standing.identity, "cost").set((books.cost + books.held_cost) / NANO / limits.cost)


def _fmt_window(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g}s"


class Ledger:
    """The books of this process (the embedded default: one API process)."""

    def __init__(self, settings: Settings):
        self.limits = dict(settings.budgets)
        self._books: dict[tuple[str, float, int], Books] = {}

    def limits_of(self, identity: str | None) -> BudgetLimits | None:
        if identity is None:
            return None
        return self.limits.get(identity) or self.limits.get("default")

    @staticmethod
    def window(limits: BudgetLimits) -> Window:
        index = int(time.time() // limits.window_s)
        return Window(index, (index + 1) * limits.window_s)

    async def standing(self, identity: str | None) -> Standing | None:
        """The key's budget now; None for a key without one (or books that cannot be read)."""
        limits = self.limits_of(identity)
        if limits is None:
            return None
        window = self.window(limits)
        books = await self._read(identity, limits.window_s, window.index)
        if books is None:
            return None
        standing = Standing(identity, limits, window, books)
        _observe(standing)
        return standing

    async def reserve(self, identity: str | None, wanted: Charge) -> Ticket | None:
        """Reserve `wanted` on the key's budget (None: the key has none); BudgetExceededError if a cap would pass."""
        limits = self.limits_of(identity)
        if limits is None:
            return None
        window = self.window(limits)
        cost = math.ceil(wanted.cost * NANO)
        verdict = await self._reserve(identity, limits, window, wanted.tokens, cost)
        if verdict is None:
            metrics.BUDGET_UNBOOKED.labels("reserve").inc()
            return Ticket(identity, limits.window_s, window.index, wanted, booked=False)
        over, books = verdict
        standing = Standing(identity, limits, window, books)
        _observe(standing)
        if over:
            metrics.BUDGET_REJECTED.labels(identity, over).inc()
            raise BudgetExceededError(standing, over, wanted)
        return Ticket(identity, limits.window_s, window.index, wanted)

    async def settle(self, ticket: Ticket | None, spent: Charge) -> None:
        """Release `ticket` and charge `spent` to the current window; never raises (the answer is not at stake)."""
        if ticket is None:
            return
        metrics.BUDGET_TOKENS.labels(ticket.identity).inc(spent.tokens)
        metrics.BUDGET_COST.labels(ticket.identity).inc(spent.cost)
        now_index = int(time.time() // ticket.window_s)
        held = ticket.held if ticket.booked else Charge(0, 0.0)
        try:
            await self._settle(ticket, held.tokens, math.ceil(held.cost * NANO), now_index,
                               spent.tokens, math.ceil(spent.cost * NANO))
        except Exception as exc:  # noqa: BLE001 - the books may miss this charge; the request must not fail
            metrics.BUDGET_UNBOOKED.labels("settle").inc()
            log.warning("could not charge %s to the budget of %s: %s", spent, ticket.identity, exc)

    # --- storage: this process's dict ----------------------------------------------------------------------
    async def _read(self, identity: str, window_s: float, index: int) -> Books | None:
        return self._books.get((identity, window_s, index), Books())

    async def _reserve(self, identity: str, limits: BudgetLimits, window: Window, tokens: int,
                       cost: int) -> tuple[str, Books] | None:
        key = (identity, limits.window_s, window.index)
        books = self._books.get(key, Books())
        used_t, used_c = books.tokens + books.held_tokens, books.cost + books.held_cost
        if limits.tokens and used_t + tokens > limits.tokens:
            return "tokens", books
        if limits.cost and used_c + cost > limits.cost * NANO:
            return "cost", books
        if len(self._books) > 10_000:  # forget earlier windows
            self._books = {k: v for k, v in self._books.items() if (k[2] + 2) * k[1] >= time.time()}
        books = Books(books.tokens, books.cost, books.held_tokens + tokens, books.held_cost + cost)
        self._books[key] = books
        return "", books

    async def _settle(self, ticket: Ticket, held_tokens: int, held_cost: int, now_index: int, tokens: int,
                      cost: int) -> None:
        then = (ticket.identity, ticket.window_s, ticket.index)
        if then in self._books:
            b = self._books[then]
            self._books[then] = Books(b.tokens, b.cost, b.held_tokens - held_tokens, b.held_cost - held_cost)
        now = (ticket.identity, ticket.window_s, now_index)
        b = self._books.get(now, Books())
        self._books[now] = Books(b.tokens + tokens, b.cost + cost, b.held_tokens, b.held_cost)

    async def close(self) -> None:
        pass


class RedisLedger(Ledger):
    """The books every API process shares, in Redis."""

    def __init__(self, settings: Settings, prefix: str = "coe"):
        super().__init__(settings)
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self._reserve_script = self.redis.register_script(_RESERVE)
        self._settle_script = self.redis.register_script(_SETTLE)
        self._warned = False

    def key(self, identity: str, window_s: float, index: int) -> str:
        return f"{self.prefix}:budget:{identity}:{window_s:g}:{index}"

    @staticmethod
    def _ttl_ms(window_s: float, index: int) -> int:
        """Until a window after this one ends: a late settle still finds the reservation to release."""
        return max(1000, int(((index + 2) * window_s - time.time()) * 1000))

    def _unreachable(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("budgets cannot use redis (%s); letting requests through unbooked", type(exc).__name__)
            self._warned = True

    async def _read(self, identity: str, window_s: float, index: int) -> Books | None:
        from redis import exceptions as rexc

        try:
            raw = await self.redis.hmget(self.key(identity, window_s, index), "tokens", "cost", "rtokens", "rcost")
        except (rexc.RedisError, OSError) as exc:
            self._unreachable(exc)
            return None
        return Books(*(int(v or 0) for v in raw))

    async def _reserve(self, identity: str, limits: BudgetLimits, window: Window, tokens: int,
                       cost: int) -> tuple[str, Books] | None:
        from redis import exceptions as rexc

        try:
            over, *books = await self._reserve_script(
                keys=[self.key(identity, limits.window_s, window.index)],
                args=[tokens, cost, limits.tokens or 0, int((limits.cost or 0) * NANO),
                      self._ttl_ms(limits.window_s, window.index)])
        except (rexc.RedisError, OSError) as exc:
            self._unreachable(exc)
            return None
        self._warned = False
        return (over.decode() if isinstance(over, bytes) else over), Books(*(int(v) for v in books))

    async def _settle(self, ticket: Ticket, held_tokens: int, held_cost: int, now_index: int, tokens: int,
                      cost: int) -> None:
        await self._settle_script(
            keys=[self.key(ticket.identity, ticket.window_s, ticket.index),
                  self.key(ticket.identity, ticket.window_s, now_index)],
            args=[held_tokens, held_cost, tokens, cost, self._ttl_ms(ticket.window_s, now_index)])

    async def close(self) -> None:
        await self.redis.aclose()


def make_ledger(settings: Settings) -> Ledger:
    if settings.budgets and settings.redis_url:
        return RedisLedger(settings)
    return Ledger(settings)
