"""The chat service: chat and text completion requests turned into engine requests and
run, with templates, tools, grammars and retrieved sources. No HTTP in here: the API
layer (server/api/) parses wire requests into the models of requests.py, calls prepare
and generate, and formats what comes back."""
