"""vLLM as a user would deploy it, the baseline of evals/gpu/vs_vllm.py: one AsyncLLM per model.

Every request goes straight to its model's AsyncLLM (`generate(prompt, SamplingParams(DELTA), request_id)`),
and the client reads the stream on the loop where that AsyncLLM lives, so nothing stands between them
(a real deployment would add HTTP). When all models fit, they are all awake. When they do not, a simple
per-request policy, one switch at a time: wake the model the request needs; while memory is short, put to
sleep the least recently used awake model, idle ones first (a busy one first finishes its requests and
takes no new ones: vLLM's sleep would drop them).

The AsyncLLMs are the ones coe's vllm engines started (engine.llm, on engine.runner's loop): both systems
are measured on the same engine processes, so neither pays for more engine starts than the other.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

from coe_evals.gpu.streams import Outcome
from coe_evals.workload import Arrival


class DirectVllm:
    def __init__(self, engines: dict, memory_gb: dict[str, float], budget_gb: float):
        self.engines = engines  # expert name -> workers.engines.vllm.VllmEngine (started)
        self.memory_gb = memory_gb
        self.budget_gb = budget_gb
        self.awake = {n for n, e in engines.items() if e.llm is not None and not e.asleep}
        self.in_flight: Counter[str] = Counter()
        self.last_used: dict[str, float] = {n: 0.0 for n in engines}
        self.wakes = self.sleeps = 0
        self.switch_s = 0.0
        self._switch = asyncio.Lock()
        self._idle = asyncio.Event()

    def used_gb(self) -> float:
        return sum(self.memory_gb[n] for n in self.awake)

    async def ensure_awake(self, name: str) -> None:
        while name not in self.awake:
            async with self._switch:
                if name in self.awake:
                    break
                t0 = time.perf_counter()
                while self.used_gb() + self.memory_gb[name] > self.budget_gb:
                    victim = min((n for n in self.awake if n != name), key=lambda n: (self.in_flight[n] > 0, self.last_used[n]))
                    self.awake.discard(victim)  # takes no new requests from now on
                    while self.in_flight[victim]:
                        self._idle.clear()
                        await self._idle.wait()
                    await asyncio.to_thread(self.engines[victim].sleep)
                    self.sleeps += 1
                await asyncio.to_thread(self.engines[name].wake)
                self.awake.add(name)
                self.wakes += 1
                self.switch_s += time.perf_counter() - t0

    def sender(self, max_tokens: int):
        async def send(a: Arrival) -> Outcome:
            started = time.perf_counter()
            await self.ensure_awake(a.expert)
            self.in_flight[a.expert] += 1
            self.last_used[a.expert] = time.monotonic()
            engine = self.engines[a.expert]
            try:
                first, tokens, done = await asyncio.wrap_future(engine.runner.spawn(_stream(engine, a, max_tokens)))
            finally:
                self.in_flight[a.expert] -= 1
                self._idle.set()
            return Outcome(a.expert, True, first - started if first else None, done - started, tokens)

        return send

    def report(self) -> dict:
        return {"switches": self.wakes, "wakes": self.wakes, "sleeps": self.sleeps, "switch_s": round(self.switch_s, 3)}


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
