"""Serving: the OpenAI-compatible server, its store and its web page."""
