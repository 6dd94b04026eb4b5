"""Ollama's API on the same port as OpenAI's (issue 17): the endpoints its clients use
(the `ollama` Python and JS libraries, Open WebUI, Continue, editor plugins), over the one
engine, prefix cache and set of vector stores. Routes in routes.py."""
