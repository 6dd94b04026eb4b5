"""Hearth's server: the HTTP API, the engines, the chat service and the CLI.

The C++ runtime is put in the process's global symbol scope before llama.cpp or any
extension module is loaded. Measured on an H200 machine (Ubuntu 24.04's Python 3.12, CUDA
13, numpy and pyarrow wheels from PyPI): when numpy had loaded libstdc++ privately first, a
CUDA build of llama.cpp segfaulted placing a model on the GPU; when llama.cpp came first,
importing pyarrow or LanceDB afterwards aborted with "free(): invalid pointer". With
libstdc++ loaded globally (what LD_PRELOAD would do) every order works.
"""

import contextlib
import ctypes
import sys

if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):  # no shared libstdc++ (a static build): nothing to share
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)  # its soname since GCC 3.4

import llama_cpp  # noqa: F401
