"""The pipeline when experts fail, over the in-process queue and a real Worker with stand-in engines
(and a stand-in encoder and fixed router, so each test picks its experts):

- an expert with no live worker is refused at planning time (503), also after the worker died;
- with k > 1 the answers that succeeded are kept, and a failed aggregator leaves the first routed answer;
- the fallback expert answers with its own system prompt and generation settings.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from coe.core.registry import parse_registry
from coe.core.settings import Settings
from coe.pipeline import ChatInput, ExpertFailed, Pipeline, Unavailable
from routers import RouteDecision, Router
from workers.engines.base import EngineError
from workers.jobs import Completion
from workers.queue_memory import MemoryQueue

EXPERTS = """version: 1
experts:
  - {name: a, engine: openai, model: m-a, api_base: "http://x/v1", params_b: 1, system_prompt: "You are A.",
     generation: {max_tokens: 7, temperature: 0.1}}
  - {name: b, engine: openai, model: m-b, api_base: "http://x/v1", params_b: 1, system_prompt: "You are B."}
  - {name: broken, engine: openai, model: m-broken, api_base: "http://x/v1", params_b: 1, system_prompt: "You are broken."}
  - {name: broken-too, engine: openai, model: m-broken, api_base: "http://x/v1", params_b: 1}
  - {name: generalist, engine: openai, model: m-g, api_base: "http://x/v1", params_b: 1, fallback: true,
     system_prompt: "You are G.", generation: {max_tokens: 9, temperature: 0.3, top_p: 0.8}}
  - {name: aggregator, engine: openai, model: AGGREGATOR_MODEL, api_base: "http://x/v1", params_b: 1, aggregator: true}
"""


class StandInEngine:
    """Answers '<model>: <system prompt>'; model `m-broken` always fails. Records every request it gets."""

    supports_sleep = False
    supports_stop = False
    requests: dict[str, list] = {}

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        pass

    unload = sleep = wake = load

    def generate(self, requests, on_delta=None, should_stop=None):
        StandInEngine.requests.setdefault(self.spec.model, []).extend(requests)
        if self.spec.model == "m-broken":
            raise EngineError("this engine always fails")
        return [Completion(text=f"{self.spec.model}: {r.messages[0]['content']}", prompt_tokens=2, completion_tokens=3)
                for r in requests]


class StandInEncoder:
    id = runtime_id = "stand-in"

    def encode(self, texts, show_progress=False):
        return np.ones((len(texts), 4), dtype=np.float32) / 2


class FixedRouter(Router):
    name = "fixed"

    def __init__(self, experts: list[str]):
        self.experts = experts

    def route(self, texts, embeddings, k=1):
        return [RouteDecision(self.experts[:k], self.name, "cat") for _ in texts]


@pytest.fixture
def service(tmp_path, monkeypatch):
    """start(route=[...], aggregator_model=...) -> (pipeline, worker task); everything stops at the end."""
    from workers import worker as worker_mod

    monkeypatch.setattr(worker_mod, "create_engine", StandInEngine)
    StandInEngine.requests = {}
    stop = asyncio.Event()

    async def start(route: list[str], aggregator_model: str = "m-agg", worker: bool = True):
        registry = parse_registry(EXPERTS.replace("AGGREGATOR_MODEL", aggregator_model), tmp_path / "experts.yaml")
        queue = MemoryQueue()
        settings = Settings(experts_file=tmp_path / "experts.yaml", request_timeout_s=3, max_k=5)
        pipeline = Pipeline(registry, StandInEncoder(), queue, settings, "fixed")
        pipeline.routers["fixed"] = FixedRouter(route)
        task = None
        if worker:
            task = asyncio.create_task(worker_mod.Worker(registry, queue).run(stop))
            await asyncio.sleep(0.05)
        return pipeline, task

    yield start
    stop.set()


def ask(k: int = 1, **kw) -> ChatInput:
    return ChatInput(model="coe", messages=[{"role": "user", "content": "Why is the sky blue?"}], k=k, **kw)


def test_an_expert_without_a_live_worker_is_503_at_planning_time(service):
    async def main():
        pipeline, _ = await service(["a"], worker=False)
        with pytest.raises(Unavailable, match="no worker"):
            await pipeline.run(ask())

    asyncio.run(main())


def test_when_the_embedded_worker_dies_requests_are_503(service):
    async def main():
        pipeline, task = await service(["a"])
        assert (await pipeline.run(ask())).text == "m-a: You are A."
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with pytest.raises(Unavailable, match="no worker"):
            await pipeline.run(ask())

    asyncio.run(main())


def test_with_k_experts_a_failed_one_is_left_out_with_stand_in_engines(service):
    async def main():
        pipeline, _ = await service(["broken", "a", "b"])
        out = await pipeline.run(ask(k=3))
        assert [x.expert for x in out.answers] == ["a", "b"]
        assert list(out.failed_experts) == ["broken"] and "always fails" in out.failed_experts["broken"]
        assert out.aggregator == "aggregator" and out.text.startswith("m-agg")
        out = await pipeline.run(ask(k=2))  # one answer left: it is the answer, nothing to aggregate
        assert [x.expert for x in out.answers] == ["a"] and out.aggregator is None
        assert out.text == "m-a: You are A." and list(out.failed_experts) == ["broken"]

    asyncio.run(main())


def test_a_failed_aggregator_leaves_the_first_routed_answer_with_stand_in_engines(service):
    async def main():
        pipeline, _ = await service(["b", "a"], aggregator_model="m-broken")
        out = await pipeline.run(ask(k=2))
        assert out.text == "m-b: You are B." and out.aggregator is None
        assert "aggregator" in out.aggregation_error and "always fails" in out.aggregation_error
        assert [x.expert for x in out.answers] == ["b", "a"]

    asyncio.run(main())


def test_the_fallback_answers_with_its_own_request_with_stand_in_engines(service):
    async def main():
        pipeline, _ = await service(["broken"])
        out = await pipeline.run(ask(top_p=0.5))
        assert out.fallback_after_error == "broken" and out.text == "m-g: You are G."
        [request] = StandInEngine.requests["m-g"]
        assert request.messages == [{"role": "system", "content": "You are G."},
                                    {"role": "user", "content": "Why is the sky blue?"}]
        assert (request.max_tokens, request.temperature, request.top_p) == (9, 0.3, 0.5)
        with pytest.raises(ExpertFailed, match="broken"):  # a client that names the expert gets it or an error
            await pipeline.run(ChatInput(model="broken", messages=[{"role": "user", "content": "hi"}]))

    asyncio.run(main())


def test_a_streamed_k2_request_whose_experts_all_failed_names_the_expert_the_fallback_replaced_with_stand_in_engines(
        service):
    async def main():
        pipeline, _ = await service(["broken", "broken-too"])
        events = [e async for e in pipeline.stream(ask(k=2, stream=True))]
        streamed = events[-1]
        assert "".join(e for e in events if isinstance(e, str)) == streamed.text == "m-g: You are G."
        assert set(streamed.failed_experts) == {"broken", "broken-too"}
        assert streamed.fallback_after_error == "broken"
        assert (await pipeline.run(ask(k=2))).fallback_after_error == "broken"  # as without streaming

    asyncio.run(main())
