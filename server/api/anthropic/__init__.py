"""Anthropic's Messages API (issue 17): what the Anthropic SDKs and Claude-Code-style tools
send, over the one engine, prefix cache and set of vector stores."""
