"""Hearth's server: the HTTP API, the engines, the chat service and the CLI.

llama.cpp's libraries are loaded first, before anything imports numpy: a CUDA build of
llama.cpp that uses OpenMP segfaulted while placing a model on the GPU when numpy (with its
own OpenMP runtime) had been loaded before it (measured on an H200 machine; importing
llama_cpp first, as here, avoids it).
"""

import llama_cpp  # noqa: F401
