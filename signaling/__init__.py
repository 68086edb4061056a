"""The signaling API (FastAPI): the composition root that wires agent, media and store."""
