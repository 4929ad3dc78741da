"""llmc: a GPT-2 pretraining engine with a C/CUDA core, file-compatible with llm.c.

Submodules: ``llmc.config`` (model sizes and parameter layout), ``llmc.formats`` (the on-disk
formats), ``llmc.tokenizer`` (GPT-2 BPE through tiktoken, online or from local files), ``llmc.cpu``
(the C fp32 engine), ``llmc.reference`` (the PyTorch reference model; needs torch).
"""

from llmc.config import GPT2Config

__all__ = ["GPT2Config"]
__version__ = "0.1.0"
