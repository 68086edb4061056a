# Production-like image of the Parley server (CPU). Build: docker compose build
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PARLEY_HOST=0.0.0.0 PARLEY_PORT=8080
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The locked, hash-checked dependencies first (a layer that survives code changes),
# then the project itself without dependencies: the image runs what the tests ran.
COPY requirements requirements
RUN pip install --require-hashes -r requirements/tools.lock \
    && pip install --require-hashes -r requirements/run.lock \
    && pip install --require-hashes --no-deps -r requirements/no-deps.lock
COPY pyproject.toml README.md ./
COPY agent agent
COPY agents agents
COPY media media
COPY signaling signaling
COPY store store
RUN pip install --no-deps --no-build-isolation . \
    && apt-get purge -y build-essential cmake && apt-get autoremove -y
EXPOSE 8080
CMD ["python", "-m", "signaling"]
