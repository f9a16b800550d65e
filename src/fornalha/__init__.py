"""fornalha: from raw text to a served, self-improving language model.

Stages, one package each, data flowing one way:
data -> tokenizer -> model -> train -> evaluate -> infer -> interop (export/import).
"""

__version__ = "0.1.0"
