"""A real browser (headless Chromium, driven by Playwright) calls the agent from the demo page.

Chromium's fake microphone plays a WAV of a spoken question. The test asserts
that the page shows the question's transcript and that it received non-silent
agent audio (measured in the page with WebAudio).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import AgentModels
from media.frames import AudioFrame
from media.wav import write_wav
from tests.server import running_server
from tests.speech import compose
from tests.textnorm import contains_phrase, phrase_error

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def base_url(models: AgentModels) -> Iterator[str]:
    with running_server(models, max_calls=2) as url:
        yield url


def chromium_or_skip() -> str:
    if CHROMIUM:
        return CHROMIUM
    reason = "Chromium is not installed (scripts/install_browser.sh installs Debian's package)"
    if os.environ.get("CI"):
        pytest.fail(f"browser test must run in CI: {reason}")
    pytest.skip(reason)


async def test_demo_page_call_in_chromium(base_url: str, tmp_path: Path) -> None:
    executable = chromium_or_skip()
    from playwright.async_api import async_playwright

    question = compose(1.0, "What is the capital of France?", 6.0, rate=48000)
    mic = tmp_path / "mic.wav"
    write_wav(mic, AudioFrame(question.astype(np.int16), 48000))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}",
            ],
        )
        try:
            page = await browser.new_page()
            await page.goto(base_url + "/")
            await page.click("#call")
            await page.wait_for_function(
                "window.parleyStats.finals.length > 0 && window.parleyStats.replies.length > 0"
                " && window.parleyStats.maxLevel > 0.02",
                timeout=120_000,
            )
            stats = await page.evaluate("window.parleyStats")
            shown = await page.inner_text("#transcripts")
            await page.screenshot(path=str(tmp_path / "page.png"))
            await page.click("#hangup")
            assert await page.inner_text("#state") == "idle"
        finally:
            await browser.close()
    # one misheard word of the four is tolerated; the page shows what it heard
    final = str(stats["finals"][0])
    assert phrase_error(final, "the capital of France") <= 0.25, final
    assert contains_phrase(shown, final), shown
    assert stats["maxLevel"] > 0.02 and stats["audioFrames"] > 5
    assert "state" in stats["events"] and "metrics" in stats["events"]
