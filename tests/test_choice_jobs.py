"""Scoring jobs (request.choices): JSON round trip, both queues, and the worker's routing to choice_logprobs.

The engines are stand-ins (no engine in this tree has choice_logprobs yet); the queues are real:
the in-process queue and Redis Streams on 127.0.0.1:6379.
"""

from __future__ import annotations

import json

from tests.test_queue_contract import backend, run  # noqa: F401  (fixtures: both queue backends)
from workers.jobs import Completion, GenerationRequest, Job, JobResult

LETTERS = [" A", " B", " C", " D"]


def scoring_job(expert: str, text: str, choices: list[str] | None = None) -> Job:
    return Job(expert=expert, request=GenerationRequest(
        messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "Answer:"}],
        choices=list(choices or LETTERS)))


def text_job(expert: str, text: str) -> Job:
    return Job(expert=expert, request=GenerationRequest(messages=[{"role": "user", "content": text}], max_tokens=4))


def test_scoring_job_and_result_survive_json():
    job = scoring_job("x", "pick C")
    again = Job.from_json(job.to_json())
    assert again == job and again.request.choices == LETTERS
    result = JobResult(job_id=job.id, expert="x", completion=Completion(" C", 0, 0, choice_logprobs=[-3.0, -2.5, -0.1, -4.0]))
    assert JobResult.from_json(result.to_json()) == result
    plain = json.loads(text_job("x", "hi").to_json())
    del plain["request"]["choices"]  # a job written before scoring jobs existed
    assert Job.from_json(json.dumps(plain)).request.choices is None


def test_scoring_jobs_travel_through_the_queue(run):  # noqa: F811
    async def scenario(make_queue):
        q = make_queue()
        job = scoring_job("x", "pick B", [" yes", " no"])
        await q.submit(job)
        [claimed] = await q.claim("x", "w", 4)
        assert claimed.request.choices == [" yes", " no"] and claimed.request.messages == job.request.messages
        await q.complete(claimed, JobResult(job_id=job.id, expert="x",
                                            completion=Completion(" no", 0, 0, choice_logprobs=[-2.0, -0.5])))
        result = await q.wait_result(job.id, timeout=5)
        assert result.completion.choice_logprobs == [-2.0, -0.5] and result.completion.text == " no"

    run(scenario)


class StandInEngine:
    """Generates an echo; scores 0 for the choice the message names ("pick C") and -(i+1) for the others."""

    supports_sleep = False
    calls: list[tuple[str, int, tuple[str, ...]]] = []

    def __init__(self, spec):
        self.spec = spec

    def load(self):
        pass

    sleep = wake = unload = load

    def generate(self, requests, on_delta=None):
        StandInEngine.calls.append(("generate", len(requests), ()))
        return [Completion("echo: " + r.messages[-1]["content"], 1, 1) for r in requests]

    def prompt_ids(self, messages):
        return " ".join(m["content"] for m in messages).split()

    def choice_logprobs(self, requests, choices):
        StandInEngine.calls.append(("choice_logprobs", len(requests), tuple(choices)))
        return [[0.0 if r.messages[0]["content"].endswith(c.strip()) else -(i + 1.0) for i, c in enumerate(choices)]
                for r in requests]


class StandInEngineWithoutScoring(StandInEngine):
    choice_logprobs = None


class StandInEngineWithBadScores(StandInEngine):
    def choice_logprobs(self, requests, choices):
        return [[0.0] for _ in requests]


ENGINES = {"scorer": StandInEngine, "plain": StandInEngineWithoutScoring, "bad": StandInEngineWithBadScores}


def _worker(tmp_path, monkeypatch, queue):
    from coe.core.registry import load_registry
    from workers import worker as worker_mod

    lines = [f'  - {{name: {m}, engine: openai, model: {m}, api_base: "http://127.0.0.1:9/v1", device: cpu, '
             f'max_batch: 8, params_b: 1}}' for m in ENGINES]
    (tmp_path / "experts.yaml").write_text("version: 1\nexperts:\n" + "\n".join(lines) + "\n")
    monkeypatch.setattr(worker_mod, "create_engine", lambda spec: ENGINES[spec.model](spec))
    w = worker_mod.Worker(load_registry(tmp_path / "experts.yaml"), queue, name="w", memory_budget_gb=100)
    w.ready.set()
    return w


def test_worker_routes_scoring_jobs_to_choice_logprobs_with_stand_in_engine(run, tmp_path, monkeypatch):  # noqa: F811
    StandInEngine.calls = []

    async def scenario(make_queue):
        q = make_queue()
        w = _worker(tmp_path, monkeypatch, q)
        jobs = [scoring_job("scorer", "pick C"), text_job("scorer", "hello"), scoring_job("scorer", "pick A"),
                scoring_job("scorer", "pick yes", [" yes", " no"])]
        for job in jobs:
            await q.submit(job)
        while await w.step():
            pass
        results = [await q.wait_result(j.id, timeout=5) for j in jobs]
        assert all(r.ok for r in results), [r.error for r in results]
        assert [r.completion.text for r in results] == [" C", "echo: hello", " A", " yes"]
        assert results[0].completion.choice_logprobs == [-1.0, -2.0, 0.0, -4.0]
        assert results[3].completion.choice_logprobs == [0.0, -2.0]
        assert [r.completion.prompt_tokens for r in results] == [3, 1, 3, 3]  # scoring counts its prompt as generation does
        assert results[1].completion.choice_logprobs is None
        assert sorted(StandInEngine.calls) == [("choice_logprobs", 1, (" yes", " no")),
                                               ("choice_logprobs", 2, tuple(LETTERS)), ("generate", 1, ())]

    run(scenario)


def test_scoring_fails_clearly_on_engines_that_cannot_score_with_stand_in_engine(run, tmp_path, monkeypatch):  # noqa: F811
    async def scenario(make_queue):
        q = make_queue()
        w = _worker(tmp_path, monkeypatch, q)
        jobs = [scoring_job("plain", "pick B"), text_job("plain", "still works"), scoring_job("bad", "pick D")]
        for job in jobs:
            await q.submit(job)
        while await w.step():
            pass
        no_method, text, bad_shape = [await q.wait_result(j.id, timeout=5) for j in jobs]
        assert not no_method.ok and no_method.error_type == "engine_error"
        assert "cannot score choices" in no_method.error
        assert text.ok and text.completion.text == "echo: still works"
        assert not bad_shape.ok and "answered 1 rows of [1] scores; expected 1 rows of 4" in bad_shape.error

    run(scenario)
