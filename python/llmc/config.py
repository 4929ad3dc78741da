"""GPT-2 model configuration and the parameter layout shared by every engine and file format."""

from __future__ import annotations

from dataclasses import dataclass

GPT2_VOCAB_SIZE = 50257
GPT2_PADDED_VOCAB_SIZE = 50304  # 50257 rounded up to a multiple of 128
GPT2_MAX_SEQ_LEN = 1024
GPT2_EOT = 50256

# depth -> (channels, heads) of the GPT-2 family and the llm.c descriptors built on it
_DEPTH_TO_WIDTH = {
    6: (384, 6),
    12: (768, 12),
    24: (1024, 16),
    36: (1280, 20),
    48: (1600, 25),
    60: (1920, 30),
    72: (2880, 30),
    84: (3456, 36),
}

PARAMETER_NAMES = (
    "wte",
    "wpe",
    "ln1w",
    "ln1b",
    "qkvw",
    "qkvb",
    "attprojw",
    "attprojb",
    "ln2w",
    "ln2b",
    "fcw",
    "fcb",
    "fcprojw",
    "fcprojb",
    "lnfw",
    "lnfb",
)
# weights that get AdamW weight decay (2-D matrices); biases and LayerNorm parameters do not
DECAYED_PARAMETERS = frozenset({"wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw"})


@dataclass(frozen=True)
class GPT2Config:
    """Sizes of a GPT-2 model, in the order of the model file header."""

    max_seq_len: int = GPT2_MAX_SEQ_LEN
    vocab_size: int = GPT2_VOCAB_SIZE
    num_layers: int = 12
    num_heads: int = 12
    channels: int = 768
    padded_vocab_size: int = GPT2_PADDED_VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPT2Config.{name} must be positive, got {getattr(self, name)}")
        if self.channels % self.num_heads != 0:
            raise ValueError(
                f"GPT2Config: channels {self.channels} is not divisible by num_heads "
                f"{self.num_heads}"
            )
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"GPT2Config: padded_vocab_size {self.padded_vocab_size} < vocab_size "
                f"{self.vocab_size}"
            )

    @classmethod
    def from_descriptor(cls, descriptor: str) -> GPT2Config:
        """Config for an llm.c-style descriptor such as "d12" (GPT-2 124M) or "d48" (1558M)."""
        if not descriptor.startswith("d") or not descriptor[1:].isdigit():
            raise ValueError(f"model descriptor {descriptor!r}: expected d<depth>, e.g. d12")
        depth = int(descriptor[1:])
        if depth not in _DEPTH_TO_WIDTH:
            known = ", ".join(f"d{d}" for d in _DEPTH_TO_WIDTH)
            raise ValueError(f"model descriptor {descriptor!r}: unknown depth (known: {known})")
        channels, heads = _DEPTH_TO_WIDTH[depth]
        return cls(num_layers=depth, num_heads=heads, channels=channels)

    @property
    def head_size(self) -> int:
        return self.channels // self.num_heads

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter tensor, in the on-disk order."""
        L, C, Vp, maxT = self.num_layers, self.channels, self.padded_vocab_size, self.max_seq_len
        return {
            "wte": (Vp, C),
            "wpe": (maxT, C),
            "ln1w": (L, C),
            "ln1b": (L, C),
            "qkvw": (L, 3 * C, C),
            "qkvb": (L, 3 * C),
            "attprojw": (L, C, C),
            "attprojb": (L, C),
            "ln2w": (L, C),
            "ln2b": (L, C),
            "fcw": (L, 4 * C, C),
            "fcb": (L, 4 * C),
            "fcprojw": (L, C, 4 * C),
            "fcprojb": (L, C),
            "lnfw": (C,),
            "lnfb": (C,),
        }

    def num_parameters(self) -> int:
        """Total number of parameters, padded vocabulary rows included."""
        total = 0
        for shape in self.parameter_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total
