"""Interoperability with the rest of the ecosystem: Hugging Face export and import.

from fornalha.interop import export_hf, import_hf

export_hf("runs/tiny", "exports/tiny-hf")          # -> a folder transformers / vLLM / llama.cpp read
import_hf("exports/tiny-hf", "runs/tiny-again")    # -> a run folder fornalha can train, eval, serve
"""

from fornalha.interop.hf import export_hf, import_hf

__all__ = ["export_hf", "import_hf"]
