"""An LLM that a router uses (the skills router's keyword writer) is served like any expert: jobs on the
queue, answered by the worker that holds the model, counted in the metrics; never an engine in the API."""

from __future__ import annotations

import httpx


def metric(server, name: str, label: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith(name) and label in ln]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_keyword_skills_are_written_by_the_worker_through_the_queue(keyword_server):
    texts = ["Solve for x: 3x + 5 = 20.", "Who wrote the Federalist Papers?"]
    counted = ("coe_router_llm_jobs_total", 'expert="generalist"'), ("coe_worker_batches", ""), \
        ("coe_tokens_total", 'expert="generalist"')
    before = {name: metric(keyword_server, name, label) for name, label in counted}
    r = httpx.post(f"{keyword_server.v1}/route", json={"input": texts, "k": 1, "router": "skills"}, timeout=180)
    assert r.status_code == 200, r.text
    decisions = r.json()["data"]
    assert [d["router"] for d in decisions] == ["skills", "skills"]
    assert all(d["reason"].startswith("skills [") for d in decisions)
    added = {name: metric(keyword_server, name, label) - before[name] for name, label in counted}
    assert added["coe_router_llm_jobs_total"] == 2
    assert added["coe_worker_batches"] >= 1
    assert added["coe_tokens_total"] > 0
