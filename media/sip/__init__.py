"""SIP for phone calls: a user-agent server, asyncio-native, over ``sipmessage``.

Signalling:

- ``messages``: strict parsing, TCP framing and response building.
- ``transactions``: RFC 3261 server/client transactions and their timers.
- ``dialogs``: the dialog of an answered call (BYE, REFER, re-INVITE, DTMF).
- ``auth``: digest authentication of INVITEs.
- ``server``: ``SipServer``, UDP and TCP on one port, admission, calls.

Media: ``sdp``, ``rtp``, ``codecs``, ``jitter`` and ``dtmf``.

The signalling API is re-exported here lazily (PEP 562), so importing a media
module such as ``media.sip.codecs`` does not load the signalling stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from media.sip.dialogs import Dialog, DialogEvents, DialogState, DialogStateError
    from media.sip.messages import MalformedMessageError, SipError, SipRejection
    from media.sip.server import (
        Acceptance,
        CallHandler,
        IncomingCall,
        SipServer,
        SipSettings,
        SipStats,
    )
    from media.sip.transactions import TransportError

_EXPORTS = {
    "Acceptance": "server",
    "CallHandler": "server",
    "Dialog": "dialogs",
    "DialogEvents": "dialogs",
    "DialogState": "dialogs",
    "DialogStateError": "dialogs",
    "IncomingCall": "server",
    "MalformedMessageError": "messages",
    "SipError": "messages",
    "SipRejection": "messages",
    "SipServer": "server",
    "SipSettings": "server",
    "SipStats": "server",
    "TransportError": "transactions",
}

__all__ = [
    "Acceptance",
    "CallHandler",
    "Dialog",
    "DialogEvents",
    "DialogState",
    "DialogStateError",
    "IncomingCall",
    "MalformedMessageError",
    "SipError",
    "SipRejection",
    "SipServer",
    "SipSettings",
    "SipStats",
    "TransportError",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
