"""vLLM without coe, the baselines of evals/gpu/vs_vllm.py: one AsyncLLM per model, requests straight to it.

Every request goes to its model's AsyncLLM (`generate(prompt, SamplingParams(DELTA), request_id)`) and its
client reads the stream on the loop where that AsyncLLM lives, so nothing stands between them (a real
deployment would add HTTP).

- split: when the models fit, each gets its share of the GPU (its `memory_gb`) and all stay awake; no
  policy at all.
- switching: when they do not fit, ours: the best simple policy we could write from vLLM's own sleep
  mode, as a user would. Requests for an awake model go straight in. Requests for a sleeping model wait
  in its queue; the sleeping model with the most waiting (then the oldest) is woken as soon as memory
  can be freed by putting to sleep awake models with no work (nothing running, nothing waiting; least
  recently used first), which sleep before it wakes. No model with work is switched out, except for starvation: when the oldest
  request of a sleeping model has waited `max_wait_s`, the awake model with the least work stops taking
  new requests, drains, and is put to sleep. Switches of different engines run at the same time (no
  lock across engines); memory is reserved for a model from the moment its wake is decided.

The AsyncLLMs are the ones coe's vllm engines started (engine.llm, on engine.runner's loop), borrowed
(shared_engines.py): both systems run on the same engine processes, and their switches are timed alike.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque

from coe_evals.gpu.streams import Outcome
from coe_evals.workload import Arrival

RECHECK_S = 0.25
"""How often a waiting request looks again for starvation (its model's switch may depend on it)."""


class VllmOnly:
    def __init__(self, engines: dict, memory_gb: dict[str, float], budget_gb: float, max_wait_s: float = 30.0):
        self.engines = engines  # expert name -> a borrowed workers.engines.vllm.VllmEngine (started)
        self.memory_gb = memory_gb
        self.budget_gb = budget_gb
        self.max_wait_s = max_wait_s
        self.awake = {n for n, e in engines.items() if e.llm is not None and not e.asleep}
        self.closed: set[str] = set()  # awake, taking no new requests: draining to make room for a starving model
        self.leaving: set[str] = set()  # being put to sleep
        self.coming: dict[str, float] = {}  # being woken -> GB its switch holds: the most of its victims' and its own
        self.in_flight: Counter[str] = Counter()
        self.waiting: dict[str, deque[tuple[float, asyncio.Future]]] = {n: deque() for n in engines}
        self.last_used: dict[str, float] = {n: 0.0 for n in engines}
        self._switches: set[asyncio.Task] = set()

    @property
    def policy(self) -> str:
        return "split" if sum(self.memory_gb[n] for n in self.engines) <= self.budget_gb else "switching"

    async def admit(self, name: str) -> None:
        """Return once `name` is awake and has counted this request in flight."""
        if name in self.awake and name not in self.closed and name not in self.leaving:
            self.in_flight[name] += 1
            return
        ticket = asyncio.get_running_loop().create_future()
        entry = (time.monotonic(), ticket)
        self.waiting[name].append(entry)
        self._plan()
        try:
            while not ticket.done():
                try:
                    await asyncio.wait_for(asyncio.shield(ticket), RECHECK_S)
                except TimeoutError:
                    self._plan()
        except asyncio.CancelledError:  # the client gave up: its place in the queue, or in the engine, is freed
            if ticket.done() and ticket.exception() is None:
                self.finished(name)
            elif entry in self.waiting[name]:
                self.waiting[name].remove(entry)
            raise
        ticket.result()

    def finished(self, name: str) -> None:
        self.in_flight[name] -= 1
        self.last_used[name] = time.monotonic()
        self._plan()

    def _let_in(self, name: str) -> None:
        queue = self.waiting[name]
        while queue:
            _, ticket = queue.popleft()
            if not ticket.done():
                self.in_flight[name] += 1
                ticket.set_result(None)

    def _idle(self, name: str) -> bool:
        return not self.in_flight[name] and (name in self.closed or not self.waiting[name])

    def _plan(self) -> None:
        for name in self.awake - self.closed - self.leaving:
            self._let_in(name)
        used = sum(self.memory_gb[n] for n in self.awake - self.leaving) + sum(self.coming.values())
        now = time.monotonic()
        targets = [n for n, q in self.waiting.items() if q and n not in self.awake and n not in self.coming]
        for target in sorted(targets, key=lambda n: (-len(self.waiting[n]), self.waiting[n][0][0])):
            free = self.budget_gb - used
            victims = []
            for v in sorted((n for n in self.awake - self.leaving if self._idle(n)), key=self.last_used.get):
                if free >= self.memory_gb[target]:
                    break
                victims.append(v)
                free += self.memory_gb[v]
            if free >= self.memory_gb[target]:  # its victims sleep before it wakes: it holds the most of the two
                freed = sum(self.memory_gb[v] for v in victims)
                used += max(freed, self.memory_gb[target]) - freed
                self._start_switch(target, victims, max(freed, self.memory_gb[target]))
            elif now - self.waiting[target][0][0] >= self.max_wait_s:
                busy = self.awake - self.leaving - self.closed
                if busy:
                    self.closed.add(min(busy, key=lambda n: (len(self.waiting[n]) + self.in_flight[n], self.last_used[n])))
                break  # the starving model gets the next memory freed, not a smaller one behind it
        if not any(q and now - q[0][0] >= self.max_wait_s for n, q in self.waiting.items() if n not in self.awake):
            for name in self.closed - self.leaving:  # nobody starves any more: take requests again
                self.closed.discard(name)
                self._let_in(name)

    def _start_switch(self, target: str, victims: list[str], holds_gb: float) -> None:
        self.coming[target] = holds_gb
        self.leaving.update(victims)
        task = asyncio.create_task(self._switch(target, victims), name=f"switch-{target}")
        self._switches.add(task)
        task.add_done_callback(self._switches.discard)

    async def _switch(self, target: str, victims: list[str]) -> None:
        try:
            await asyncio.gather(*(asyncio.to_thread(self.engines[v].sleep) for v in victims))
            self.awake.difference_update(victims)
            await asyncio.to_thread(self.engines[target].wake)
            self.awake.add(target)
        except Exception as exc:  # the requests that waited for it fail; the others go on
            for _, ticket in self.waiting[target]:
                if not ticket.done():
                    ticket.set_exception(exc)
            self.waiting[target].clear()
        finally:
            self.coming.pop(target)
            self.leaving.difference_update(victims)
            self.closed.difference_update(victims)
            self._plan()

    def sender(self, max_tokens: int):
        async def send(a: Arrival) -> Outcome:
            started = time.perf_counter()
            await self.admit(a.expert)
            engine = self.engines[a.expert]
            try:
                first, tokens, done = await asyncio.wrap_future(engine.runner.spawn(_stream(engine, a, max_tokens)))
            finally:
                self.finished(a.expert)
            return Outcome(a.expert, True, first - started if first else None, done - started, tokens)

        return send

    async def close(self) -> None:
        """Wait for switches still running (a run's last requests may have ended during one)."""
        if self._switches:
            await asyncio.gather(*self._switches, return_exceptions=True)


async def _stream(engine, a: Arrival, max_tokens: int) -> tuple[float | None, int, float]:
    """On the engine's own loop: one streamed request, as a user's client of AsyncLLM would send it."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    ids = engine.prompt_ids(a.messages)  # the same chat template and token ids coe sends
    params = SamplingParams(max_tokens=max(1, min(max_tokens, engine.max_model_len - len(ids))), temperature=0.0,
                            output_kind=RequestOutputKind.DELTA)
    first, tokens = None, 0
    async for out in engine.llm.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
        n = len(out.outputs[0].token_ids)
        if n and first is None:
            first = time.perf_counter()
        tokens += n
    return first, tokens, time.perf_counter()
