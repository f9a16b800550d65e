"""The explain view: what a trained Transformer does with a text the user chooses.

`analysis.explain_text` runs the model once and returns the tokens, every layer's and head's
attention weights, the top-10 next tokens at each position and each token's loss; `page.render_page`
turns that into one self-contained HTML page (`fornalha explain`, and GET /explain on `fornalha serve`).
"""

from fornalha.explain.analysis import decode_attention, explain_text
from fornalha.explain.page import render_page

__all__ = ["decode_attention", "explain_text", "render_page"]
