"""Audio plumbing: frames, resampling, WAV files and the playout buffer.

``media`` never imports ``agent``; transports (WebRTC, SIP, LiveKit, WebSocket)
live here too and hand the agent 16 kHz mono int16 frames.
"""

from media.errors import AudioFormatError
from media.frames import AudioFrame

__all__ = ["AudioFormatError", "AudioFrame"]
