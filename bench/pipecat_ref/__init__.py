"""The Pipecat reference line of the wire benchmark (issue 11).

A Pipecat bot (``bot.py``: SmallWebRTC transport, Silero VAD, faster-whisper,
llama.cpp through its OpenAI-compatible server, Piper) serving the same local
models, prompt and turn-taking knobs as the Parley server, so the wire
benchmark's v2v scenario can call both in one run and state their ratio
(``python -m bench.wire --scenarios v2v,pipecat``).

``bot.py`` runs in a virtual environment of its own (``install.sh``); the
other modules run in the repository's ``.venv`` and import nothing of
Pipecat. ``settings.py`` is shared by both sides and uses the standard
library only.
"""
