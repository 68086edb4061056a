"""The benchmark's scenarios, one module each.

* ``v2v``: voice-to-voice latency of single calls, with the per-stage breakdown;
* ``bargein``: how fast the agent goes quiet when talked over, and coughs that must not stop it;
* ``turns``: questions with a mid-sentence pause, counting turns cut off early;
* ``concurrency``: 1..16 simultaneous calls asking questions in a loop;
* ``soak``: 100 calls one after another, looking for leaks;
* ``install``: the README set-up in a fresh clone, and the server's time to ready;
* ``sip``: phone calls over SIP/RTP (voice-to-voice, barge-in, echo);
* ``cloud``: voice-to-voice and concurrency with Groq and ElevenLabs served on loopback
  with realistic latencies (``bench.wire.vendors``).
"""
