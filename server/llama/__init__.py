"""The llama.cpp layer: every call into llama_cpp goes through here (models, contexts and
their batches, the thread pool, samplers, log routing). Thin and typed; no policy, no
threads of its own, nothing above it imported."""
