"""The conversation: VAD, turn-taking, STT, LLM, TTS and barge-in.

``agent`` uses only ``media``'s frames and playout; transports, the signaling
API and the store are wired around it by ``signaling``.
"""
