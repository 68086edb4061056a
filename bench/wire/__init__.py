"""Benchmarks over the wire: the real server, aiortc caller peers over loopback WebRTC.

Run ``scripts/bench.sh`` (or ``.venv/bin/python -m bench.wire``); see
``bench.wire.cli`` for the options and ``bench.wire.scenarios`` for what each
scenario measures. Results go to ``bench/results/<date>.json``, a Markdown
report beside it and PNG plots.
"""
