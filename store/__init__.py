"""Durable sessions and turns (SQLAlchemy), hot state and caches (Redis or in-process).

``store`` imports nothing from ``agent``, ``media`` or ``signaling``.
"""
