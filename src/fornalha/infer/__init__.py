"""Inference: the engine (prefill + cached, batched decoding), sampling, streaming, quantization.

    from fornalha.infer import Engine, SamplingParams
    engine = Engine(model, tokenizer, max_batch_size=8)
    engine.generate(["Once upon a time"], SamplingParams(temperature=0.8, top_p=0.95, seed=1))

See `engine.py` for how requests flow (and how continuous batching fits), `decode.py` for the fast
decode step, `sampling.py` for the logit pipeline, `streaming.py` for UTF-8-safe streaming with
stop strings, and `quantize.py` for int8 weights.
"""

from fornalha.infer.engine import Completion, Engine, Event, GenerationResult, TokenLogprob
from fornalha.infer.sampling import SamplingParams
from fornalha.infer.streaming import IncrementalDecoder, StopMatcher, TextStream

__all__ = [
    "Completion",
    "Engine",
    "Event",
    "GenerationResult",
    "IncrementalDecoder",
    "SamplingParams",
    "StopMatcher",
    "TextStream",
    "TokenLogprob",
]
