"""Third-party platforms the agent's tools act on (music: Spotify, SoundCloud).

Each adapter speaks its vendor's documented Web API over HTTP; the user's OAuth
tokens come from an injected ``AccessTokens`` (the store keeps them encrypted),
so this package never imports the store or the signaling layer.
"""
