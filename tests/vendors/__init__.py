"""Loopback stand-ins for third-party cloud APIs, speaking each vendor's documented protocol.

Importable without pytest, so benchmarks can serve them too.
"""
