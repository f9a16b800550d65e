"""An OpenAI-compatible HTTP server over the inference engine (`fornalha serve`).

protocol.py   the request bodies (pydantic), unknown parameters rejected by name
errors.py     OpenAI's error shape and the handlers that make every bad input a 4xx
auth.py       API keys (constant-time compare) and per-key token buckets
metrics.py    Prometheus metrics (prometheus-client)
async_engine.py  the engine's own thread and the asyncio bridge to it
app.py        the FastAPI app: `create_app(engine, tokenizer, ...)`
swap.py       hot swap: the version a request keeps to its end, the registry watcher, /admin/reload
"""
