"""The price table: per-model prices, billing minimums, free and unknown providers, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.pricing import DEFAULT_PRICES_PATH, PriceTable, PriceTableError, StageUse
from agent.usage import DroppedWork, TurnUsage
from signaling.recorder import priced_usage

TABLE = PriceTable.parse(
    {
        "providers": {
            "local": 0,
            "Acme": {
                "llm": {"usd_per_1m_prompt_tokens": 1.0, "usd_per_1m_completion_tokens": 2.0},
                "stt": {"usd_per_hour": 3.6},
                "tts": {"usd_per_1k_chars": 0.5},
                "models": {
                    "big": {
                        "llm": {
                            "usd_per_1m_prompt_tokens": 10.0,
                            "usd_per_1m_completion_tokens": 30.0,
                        }
                    },
                    "studio": {"tts": {"usd_per_1k_chars": 2.0}},
                },
            },
            "groqish": {
                "models": {
                    "whisper": {"stt": {"usd_per_hour": 0.36, "min_seconds_per_request": 10}},
                },
            },
        }
    }
)


def test_a_model_price_overrides_its_providers() -> None:
    base = TurnUsage(llm_provider="acme", prompt_tokens=1_000, completion_tokens=500)
    assert TABLE.cost(base) == pytest.approx(0.001 + 0.001)
    big = TurnUsage(
        llm_provider="acme", llm_model="big", prompt_tokens=1_000, completion_tokens=500
    )
    assert TABLE.cost(big) == pytest.approx(0.01 + 0.015)
    # a model the table does not list, or one without a price for this stage, pays the provider's
    other = TurnUsage(llm_provider="acme", llm_model="studio", prompt_tokens=1_000)
    assert TABLE.cost(other) == pytest.approx(0.001)
    # TTS prices per model where the usage names it (the ``tts_model`` key of the dict form)
    speech = {"tts_provider": "acme", "tts_voice": "acme:v1", "tts_chars": 1_000}
    assert TABLE.cost(speech) == pytest.approx(0.5)
    assert TABLE.cost({**speech, "tts_model": "studio"}) == pytest.approx(2.0)


def test_stt_is_billed_at_least_the_minimum_per_request() -> None:
    def stt(seconds: float) -> float | None:
        usage = TurnUsage(stt_provider="groqish", stt_model="whisper", stt_audio_s=seconds)
        return TABLE.cost(usage)

    per_s = 0.36 / 3600
    assert stt(3.0) == pytest.approx(10 * per_s)  # a short utterance pays the 10 s minimum
    assert stt(10.0) == pytest.approx(10 * per_s)
    assert stt(25.5) == pytest.approx(25.5 * per_s)
    assert stt(0.0) == 0.0  # nothing sent, nothing billed
    no_minimum = TurnUsage(stt_provider="acme", stt_audio_s=3.0)
    assert TABLE.cost(no_minimum) == pytest.approx(3.0 * 3.6 / 3600)


def test_unknown_providers_have_no_price_and_local_costs_zero() -> None:
    assert TABLE.cost(TurnUsage()) is None  # no stage ran
    unknown = TurnUsage(llm_provider="mystery", prompt_tokens=100, tts_provider="nope", tts_chars=9)
    assert TABLE.cost(unknown) is None
    assert TABLE.cost_by_stage(unknown) == {}
    # an unlisted model at a provider with no provider-level price is unknown too
    assert TABLE.cost(TurnUsage(stt_provider="groqish", stt_model="other", stt_audio_s=4)) is None

    local = TurnUsage(
        stt_provider="local",
        stt_model="tiny.en",
        stt_audio_s=2.0,
        llm_provider="local",
        llm_model="smollm2",
        prompt_tokens=400,
        completion_tokens=30,
        tts_provider="local",
        tts_chars=120,
    )
    assert TABLE.cost(local) == 0.0
    assert TABLE.cost_by_stage(local) == {"stt": 0.0, "llm": 0.0, "tts": 0.0}
    assert TABLE.unpriced(local) == []

    # a partly priced turn: the known stages are summed, the others named
    mixed = TurnUsage(
        stt_provider="local",
        stt_audio_s=2.0,
        llm_provider="ACME",  # provider names are matched case-insensitively
        prompt_tokens=1_000_000,
        tts_provider="nope",
        tts_chars=50,
    )
    assert TABLE.cost_by_stage(mixed) == {"stt": 0.0, "llm": 1.0}
    assert TABLE.cost(mixed) == 1.0
    assert TABLE.unpriced(mixed) == [StageUse("tts", "nope", None, chars=50)]


def test_usage_in_its_dict_form_is_read_tolerantly() -> None:
    usage = TurnUsage(llm_provider="acme", prompt_tokens=1_000_000, completion_tokens=0)
    assert TABLE.cost(usage.to_dict()) == TABLE.cost(usage) == 1.0
    garbled = {
        "llm_provider": "acme",
        "prompt_tokens": "lots",
        "completion_tokens": -5,
        "stt_provider": "  ",  # blank: the stage did not run
        "stt_audio_s": 12.0,
        "tts_provider": "acme",
        "tts_chars": float("nan"),
    }
    assert TABLE.cost_by_stage(garbled) == {"llm": 0.0, "tts": 0.0}


def test_the_shipped_table_prices_the_cloud_providers() -> None:
    table = PriceTable.load()
    assert PriceTable.load(DEFAULT_PRICES_PATH) == table
    groq_llm = TurnUsage(
        llm_provider="groq",
        llm_model="llama-3.3-70b-versatile",
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
    )
    assert table.cost(groq_llm) == pytest.approx(0.59 + 0.79)
    groq_stt = TurnUsage(stt_provider="groq", stt_model="whisper-large-v3-turbo", stt_audio_s=2.0)
    assert table.cost(groq_stt) == pytest.approx(10 * 0.04 / 3600)  # Groq's 10 s minimum
    for model in ("llama-3.1-8b-instant", "gpt-4.1-mini", "gpt-4o-mini"):
        provider = "groq" if model.startswith("llama") else "openai"
        usage = TurnUsage(llm_provider=provider, llm_model=model, prompt_tokens=1000)
        cost = table.cost(usage)
        assert cost is not None and cost > 0, model
    flash = TurnUsage(tts_provider="elevenlabs", tts_voice="elevenlabs:abc", tts_chars=1000)
    flash_cost = table.cost(flash)
    multilingual = table.cost({**flash.to_dict(), "tts_model": "eleven_multilingual_v2"})
    assert flash_cost is not None and multilingual is not None and 0 < flash_cost < multilingual
    local = TurnUsage(stt_provider="local", llm_provider="local", tts_provider="local")
    assert table.cost(local) == 0.0
    # a self-hosted model behind the OpenAI adapter has no list price
    assert table.cost(TurnUsage(llm_provider="openai", llm_model="my-vllm-model")) is None


def _load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "prices.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(PriceTableError) as err:
        PriceTable.load(path)
    assert isinstance(err.value, ConfigError)
    message = str(err.value)
    assert str(path) in message
    return message


def test_invalid_tables_say_what_is_wrong_and_where(tmp_path: Path) -> None:
    message = _load_error(
        tmp_path,
        "providers:\n"
        "  groq:\n"
        "    models:\n"
        "      fast:\n"
        "        llm: {usd_per_1m_prompt_tokens: -1, usd_per_1m_completion_tokens: 1}\n",
    )
    assert "providers.groq.models.fast.llm.usd_per_1m_prompt_tokens" in message
    assert "greater than or equal to 0" in message

    message = _load_error(tmp_path, "providers:\n  acme:\n    tts: {usd_per_1k_characters: 1}\n")
    assert "providers.acme.tts.usd_per_1k_characters: Extra inputs are not permitted" in message
    assert "providers.acme.tts.usd_per_1k_chars: Field required" in message

    message = _load_error(tmp_path, "providers:\n  acme:\n    stt: {usd_per_hour: .nan}\n")
    assert "providers.acme.stt.usd_per_hour" in message

    message = _load_error(tmp_path, "providers:\n  local: 5\n")
    assert "providers.local" in message and "or 0 for a free provider" in message

    message = _load_error(tmp_path, "providers:\n  Acme: 0\n  acme: 0\n")
    assert "'acme' is listed twice" in message

    message = _load_error(tmp_path, "pricing:\n  local: 0\n")
    assert "pricing: Extra inputs are not permitted" in message

    assert "must be a mapping" in _load_error(tmp_path, "- local\n")
    assert "not valid YAML" in _load_error(tmp_path, "providers: {local: [\n")
    with pytest.raises(PriceTableError, match="cannot read price table"):
        PriceTable.load(tmp_path / "missing.yaml")


def test_an_empty_table_prices_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing priced\n", "utf-8")
    assert PriceTable.load(path).cost(TurnUsage(llm_provider="local")) is None


def test_the_recorder_fills_the_cost_unless_the_agent_set_it() -> None:
    usage = TurnUsage(
        llm_provider="acme", prompt_tokens=1_000_000, tts_provider="nope", tts_chars=10
    ).to_dict()
    stored = priced_usage(usage, TABLE)
    assert stored is not None and stored is not usage
    assert stored["cost_usd"] == 1.0 and stored["cost_by_stage"] == {"llm": 1.0}
    assert usage["cost_usd"] is None  # the event's own dict is left alone
    assert stored["llm_provider"] == "acme" and stored["tts_chars"] == 10
    unpriced = priced_usage(TurnUsage(llm_provider="mystery").to_dict(), TABLE)
    assert unpriced is not None
    assert unpriced["cost_usd"] is None and unpriced["cost_by_stage"] == {}
    agent_set = priced_usage({**usage, "cost_usd": 0.25}, TABLE)
    assert agent_set is not None
    assert agent_set["cost_usd"] == 0.25 and "cost_by_stage" not in agent_set
    assert priced_usage(usage, None) == usage  # no table: stored as it came
    assert priced_usage({}, TABLE) is None  # the turn carried no usage


def test_an_unpriced_provider_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="signaling.recorder")
    usage = TurnUsage(llm_provider="unlisted-llm", llm_model="m-7", prompt_tokens=5).to_dict()
    for _ in range(3):
        priced_usage(usage, TABLE)
    warnings = [r.getMessage() for r in caplog.records if "unlisted-llm" in r.getMessage()]
    assert warnings == [
        "no price for llm provider 'unlisted-llm' (model 'm-7'): left out of cost estimates"
    ]


def test_dropped_preemptive_work_is_priced_with_the_turn() -> None:
    held = TurnUsage(llm_provider="acme", prompt_tokens=1_000, completion_tokens=100)
    held.tts_provider, held.tts_chars = "acme", 40
    work = DroppedWork()
    work.add(held, llm_asked=True, streamed_tokens=100)
    work.add(TurnUsage(), llm_asked=True, streamed_tokens=5)  # cut before its report
    # the turn that follows ran no LLM (a canned apology in the local voice): the
    # dropped replies' tokens keep their provider's price
    turn = TurnUsage(tts_provider="local", tts_chars=30)
    turn.add_dropped(work)
    assert (turn.preemptive_dropped, turn.dropped_unreported) == (2, 1)
    assert (turn.prompt_tokens, turn.completion_tokens, turn.tts_chars) == (1_000, 105, 70)
    assert (turn.dropped_completion_tokens, turn.dropped_tts_chars) == (105, 40)
    assert turn.llm_provider == "acme" and turn.tts_provider == "local"
    assert TABLE.cost_by_stage(turn) == pytest.approx({"llm": 0.001 + 0.00021, "tts": 0.0})
    # nothing dropped: nothing changes
    plain = TurnUsage(llm_provider="local", prompt_tokens=7)
    plain.add_dropped(DroppedWork())
    assert plain == TurnUsage(llm_provider="local", prompt_tokens=7)
