"""Trimming the near-silence an utterance starts with, so its first sound plays sooner.

TTS voices start their audio with tens of milliseconds of near-silence
(Piper: 20-60 ms under -60 dBFS before the first phoneme, measured in
``bench/playout_latency.py``); the caller hears that as extra delay before
the agent answers. ``LeadInTrimmer`` drops it from the start of one
utterance, and only there: the pauses between its sentences are prosody.

What is dropped: the samples before the first one whose magnitude exceeds
``threshold_dbfs`` (peak, -60 dBFS by default: 45 dB under Piper's speech,
inaudible on any line), except the last ``keep_ms`` before it, which stay
and are faded in (half a raised cosine) so the audio starts at zero: no
click, and the onset itself is untouched. Nothing louder than the threshold
is ever dropped, and at most ``max_trim_ms`` is (a voice that starts with a
deliberate pause loses no more than that).

The audio may come in chunks of any size (a streaming voice's first chunks
may be all silence): the trimmer keeps the last ``keep_ms`` of what it
dropped, so the result is the same as for the whole utterance at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from media.frames import PCM

QUIET_DBFS = -60.0
"""Default threshold: samples at or under this peak level count as the quiet lead-in."""


@dataclass(frozen=True, slots=True)
class LeadInSettings:
    """How the lead-in of an utterance is trimmed (see the module doc)."""

    threshold_dbfs: float = QUIET_DBFS
    keep_ms: float = 5.0
    """Kept before the first sample over the threshold, faded in."""
    max_trim_ms: float = 250.0
    """The most that is dropped from one utterance."""

    def __post_init__(self) -> None:
        if self.threshold_dbfs >= 0 or self.keep_ms < 0 or self.max_trim_ms < 0:
            raise ValueError("lead-in: threshold under 0 dBFS, keep and max trim >= 0")


class LeadInTrimmer:
    """Drops the quiet start of one utterance's audio, fed chunk by chunk in order."""

    def __init__(self, sample_rate: int, settings: LeadInSettings | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        settings = settings or LeadInSettings()
        self.settings = settings
        self._level = int(32768 * 10 ** (settings.threshold_dbfs / 20))
        self._keep = round(sample_rate * settings.keep_ms / 1000)
        self._budget = round(sample_rate * settings.max_trim_ms / 1000)
        self._tail = np.zeros(0, np.int16)
        """The last ``keep`` samples dropped so far (they may precede the onset)."""
        self.trimmed = 0
        """Samples dropped (in all, net of the tail put back before the onset)."""
        self.done = False
        """True once the utterance's sound started: later audio passes untouched."""

    def process(self, pcm: PCM) -> PCM:
        """The chunk without the lead-in (the chunk itself once ``done``; may be empty)."""
        if self.done or not pcm.size:
            return pcm
        left = self._budget - self.trimmed
        loud = np.flatnonzero(np.abs(pcm[: left + 1].astype(np.int32)) > self._level)
        if not loud.size and pcm.size <= left:
            # all quiet and within the budget: drop it, remember its end
            self._tail = np.concatenate([self._tail, pcm])[-self._keep :] if self._keep else pcm[:0]
            self.trimmed += pcm.size
            return pcm[:0]
        onset = int(loud[0]) if loud.size else left  # the sound, or the end of the budget
        self.done = True
        cut = max(0, onset - self._keep)
        lead = pcm[cut:onset]
        if lead.size < self._keep and self._tail.size:
            lead = np.concatenate([self._tail[lead.size - self._keep :], lead])
        self._tail = pcm[:0]
        out = np.concatenate([fade_in(lead), pcm[onset:]])
        self.trimmed += pcm.size - out.size  # less what came back from the tail
        return out


def fade_in(pcm: PCM) -> PCM:
    """``pcm`` under the rising half of a raised cosine: from zero to (almost) full."""
    if not pcm.size:
        return pcm
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(pcm.size) / pcm.size)
    return np.round(pcm * ramp).astype(np.int16)
