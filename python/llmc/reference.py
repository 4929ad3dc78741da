"""The PyTorch reference GPT-2: the model every engine is checked against.

The model is the one in DESIGN.md section 3, written with plain torch ops over the parameters in
llmc's own layout: one ``nn.Parameter`` per entry of ``PARAMETER_NAMES``, shaped like
``GPT2Config.parameter_shapes()`` (per-layer tensors stacked along a leading L axis, the token
embedding padded to Vp rows). So a model file maps onto the module one tensor at a time, and a
parameter or gradient of the C engine compares directly with the one here.

Details that every engine must match:
- LayerNorm with eps 1e-5 and the biased variance.
- Attention: the qkv projection output is [q | k | v], each C wide; head h uses the channels
  [h * C/H, (h + 1) * C/H); scores are scaled by 1/sqrt(C/H) and causally masked.
- GELU is the tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
- Logits are lnf(x) @ wte^T over all Vp rows; the loss is the mean cross-entropy over the B*T
  targets using only the first V logit columns, so the padded rows of wte never get a gradient.

Also here: ``write_parity_fixture`` (a model file, a debug state with logits, loss and gradients,
and the loss trajectory of a few AdamW steps, for ``test_gpt2``) and its command line:

    python -m llmc.reference fixture --out DIR            # d12, B=4, T=64: gpt2_124M*.bin
    python -m llmc.reference fixture --out DIR --layers 2 --heads 4 --channels 64 \\
        --max-seq-len 64 --vocab 97 -B 2 -T 32
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmc.config import (
    DECAYED_PARAMETERS,
    GPT2_MAX_SEQ_LEN,
    GPT2_VOCAB_SIZE,
    PARAMETER_NAMES,
    GPT2Config,
)
from llmc.formats import (
    DebugState,
    ReferenceLosses,
    losses_sidecar_path,
    read_model,
    write_debug_state,
    write_losses_sidecar,
    write_model,
)

INIT_STD = 0.02  # GPT-2's init: normal(0, 0.02) for every weight matrix and embedding
LAYERNORM_EPS = 1e-5
VOCAB_PAD_MULTIPLE = 128

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def padded_vocab_size(vocab_size: int) -> int:
    """V rounded up to a multiple of 128, as the engines store the token embedding."""
    return (vocab_size + VOCAB_PAD_MULTIPLE - 1) // VOCAB_PAD_MULTIPLE * VOCAB_PAD_MULTIPLE


# ------------------------------------------------------------------------------------------------
# the model


class GPT2(nn.Module):
    """GPT-2 with its parameters in llmc's layout; float32 or float64."""

    # the parameters, by name (declared for type checkers; created in __init__)
    wte: nn.Parameter
    wpe: nn.Parameter
    ln1w: nn.Parameter
    ln1b: nn.Parameter
    qkvw: nn.Parameter
    qkvb: nn.Parameter
    attprojw: nn.Parameter
    attprojb: nn.Parameter
    ln2w: nn.Parameter
    ln2b: nn.Parameter
    fcw: nn.Parameter
    fcb: nn.Parameter
    fcprojw: nn.Parameter
    fcprojb: nn.Parameter
    lnfw: nn.Parameter
    lnfb: nn.Parameter

    def __init__(self, config: GPT2Config, dtype: torch.dtype = torch.float32) -> None:
        """Allocates zero parameters; use from_config or from_checkpoint for a usable model."""
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"GPT2: dtype must be torch.float32 or torch.float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        # False: attention as explicit math (softmax of masked scores; what the parity tests use).
        # True: torch.nn.functional.scaled_dot_product_attention(is_causal=True), which lets
        # PyTorch pick a fused kernel (flash / cuDNN) on the GPU; for benchmarks.
        self.use_sdpa = False
        for name, shape in config.parameter_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=dtype)))

    # -------------------------------------------------------------------------------- building

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int, dtype: torch.dtype = torch.float32) -> GPT2:
        """A freshly initialized model, GPT-2's init, reproducible from the seed.

        Weights are normal(0, 0.02), the residual projections (attprojw, fcprojw) scaled by
        1/sqrt(2L); biases 0; LayerNorm weights 1; the padded rows of wte 0. The values are drawn
        in float32 in parameter order from one torch.Generator, so a float64 model from the same
        seed holds exactly the same numbers as the float32 one.
        """
        model = cls(config, dtype)
        generator = torch.Generator().manual_seed(seed)
        projection_std = INIT_STD / math.sqrt(2 * config.num_layers)
        shapes = config.parameter_shapes()
        with torch.no_grad():
            for name in PARAMETER_NAMES:
                param = getattr(model, name)
                if name == "wte":
                    # only the V real rows are drawn; the padded rows stay zero
                    rows = torch.normal(
                        0.0, INIT_STD, (config.vocab_size, config.channels), generator=generator
                    )
                    param[: config.vocab_size].copy_(rows)
                elif name in DECAYED_PARAMETERS:
                    std = projection_std if name in ("attprojw", "fcprojw") else INIT_STD
                    param.copy_(torch.normal(0.0, std, shapes[name], generator=generator))
                elif name in ("ln1w", "ln2w", "lnfw"):
                    param.fill_(1.0)
                else:
                    param.zero_()
        return model

    @classmethod
    def from_checkpoint(cls, path: str, dtype: torch.dtype = torch.float32) -> GPT2:
        """Reads an llm.c model file (fp32 or bf16) into a model of the given dtype."""
        config, params = read_model(path)
        model = cls(config, dtype)
        model.load_numpy(params, origin=path)
        return model

    def load_numpy(self, params: dict[str, np.ndarray], origin: str = "params") -> None:
        """Copies every parameter from numpy arrays shaped like parameter_shapes()."""
        shapes = self.config.parameter_shapes()
        missing = [name for name in PARAMETER_NAMES if name not in params]
        if missing:
            raise ValueError(f"{origin}: missing parameter tensors {missing}")
        with torch.no_grad():
            for name in PARAMETER_NAMES:
                array = np.asarray(params[name])
                if tuple(array.shape) != shapes[name]:
                    raise ValueError(
                        f"{origin}: parameter {name} has shape {tuple(array.shape)}, "
                        f"expected {shapes[name]}"
                    )
                getattr(self, name).copy_(torch.from_numpy(np.array(array, dtype=np.float64)))

    def save_checkpoint(self, path: str, dtype: str = "float32") -> None:
        """Writes an llm.c model file: dtype "float32" (version 3) or "bfloat16" (version 5)."""
        params = {name: array.astype(np.float32) for name, array in self.params_numpy().items()}
        write_model(path, self.config, params, dtype=dtype)

    def params_numpy(self) -> dict[str, np.ndarray]:
        """A copy of every parameter as numpy, in the model's dtype, in the on-disk order."""
        return {name: getattr(self, name).detach().cpu().numpy().copy() for name in PARAMETER_NAMES}

    def grads_numpy(self) -> dict[str, np.ndarray]:
        """A copy of every gradient as numpy (zeros where backward has not run)."""
        grads = {}
        for name in PARAMETER_NAMES:
            param = getattr(self, name)
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            grads[name] = grad.detach().cpu().numpy().copy()
        return grads

    # -------------------------------------------------------------------------------- forward

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, Vp) for token ids idx (B, T), and the mean loss when targets are given."""
        cfg = self.config
        idx = self._check_tokens(idx, "inputs")
        B, T = idx.shape
        C, H = cfg.channels, cfg.num_heads
        hs = C // H

        positions = torch.arange(T, device=idx.device)
        x = self.wte[idx] + self.wpe[positions]  # (B, T, C)
        causal = None
        if not self.use_sdpa:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
        for layer in range(cfg.num_layers):
            # attention
            h = F.layer_norm(x, (C,), self.ln1w[layer], self.ln1b[layer], eps=LAYERNORM_EPS)
            qkv = F.linear(h, self.qkvw[layer], self.qkvb[layer])  # (B, T, 3C) = [q | k | v]
            q, k, v = qkv.split(C, dim=-1)
            q = q.view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
            k = k.view(B, T, H, hs).transpose(1, 2)
            v = v.view(B, T, H, hs).transpose(1, 2)
            if causal is None:
                att_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, H, T, T)
                scores = scores.masked_fill(~causal, float("-inf"))
                att_out = scores.softmax(dim=-1) @ v
            y = att_out.transpose(1, 2).reshape(B, T, C)  # heads side by side again
            x = x + F.linear(y, self.attprojw[layer], self.attprojb[layer])
            # MLP
            h = F.layer_norm(x, (C,), self.ln2w[layer], self.ln2b[layer], eps=LAYERNORM_EPS)
            h = F.linear(h, self.fcw[layer], self.fcb[layer])  # (B, T, 4C)
            h = F.gelu(h, approximate="tanh")
            x = x + F.linear(h, self.fcprojw[layer], self.fcprojb[layer])

        x = F.layer_norm(x, (C,), self.lnfw, self.lnfb, eps=LAYERNORM_EPS)
        logits = x @ self.wte.T  # (B, T, Vp): the padded columns are computed but never predicted

        loss = None
        if targets is not None:
            targets = self._check_tokens(targets, "targets")
            if targets.shape != idx.shape:
                raise ValueError(
                    f"GPT2.forward: targets shape {tuple(targets.shape)} != inputs shape "
                    f"{tuple(idx.shape)}"
                )
            V = cfg.vocab_size
            loss = F.cross_entropy(logits[..., :V].reshape(B * T, V), targets.reshape(B * T))
        return logits, loss

    def _check_tokens(self, tokens: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2:
            raise ValueError(f"GPT2.forward: {what} must be (B, T), got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"GPT2.forward: {what} must be integer token ids, got {tokens.dtype}")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"GPT2.forward: sequence length {tokens.shape[1]} > max_seq_len "
                f"{self.config.max_seq_len}"
            )
        # the range check reads the values back to the host; torch.compile traces past it (the
        # compiled benchmark feeds tokens it has already checked)
        if tokens.numel() > 0 and not torch.compiler.is_compiling():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"GPT2.forward: {what} hold token ids in [{low}, {high}], outside "
                    f"[0, {self.config.vocab_size})"
                )
        return tokens.long()

    # -------------------------------------------------------------------------------- training

    def configure_optimizer(
        self,
        learning_rate: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on the 2-D weights (DECAYED_PARAMETERS) and none elsewhere."""
        decayed = [getattr(self, name) for name in PARAMETER_NAMES if name in DECAYED_PARAMETERS]
        others = [getattr(self, name) for name in PARAMETER_NAMES if name not in DECAYED_PARAMETERS]
        groups = [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": others, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)


# ------------------------------------------------------------------------------------------------
# parity fixtures


@dataclass(frozen=True)
class ParityFixture:
    """Paths of a written parity fixture and what it holds."""

    model_path: str
    debug_state_path: str
    losses_path: str  # the loss sidecar: AdamW settings and `losses`
    losses: list[float]  # loss at each AdamW step, before that step's update


def random_batch(config: GPT2Config, B: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and targets (B, T) int32: targets are the inputs shifted by one token."""
    generator = torch.Generator().manual_seed(seed)
    sequence = torch.randint(0, config.vocab_size, (B, T + 1), generator=generator)
    tokens = sequence.to(torch.int32).numpy()
    return tokens[:, :T].copy(), tokens[:, 1:].copy()


def write_parity_fixture(
    out_dir: str,
    config: GPT2Config,
    B: int,
    T: int,
    seed: int,
    steps: int = 10,
    learning_rate: float = 1e-4,
    beta1: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    compute_dtype: torch.dtype = torch.float64,
    model_filename: str = "model.bin",
    debug_state_filename: str = "debug_state.bin",
) -> ParityFixture:
    """Writes a model file, its debug state and the losses of `steps` AdamW steps to out_dir.

    The model is GPT2.from_config(config, seed) written as fp32; the batch is random_batch(config,
    B, T, seed + 1). The debug state holds the logits, loss and gradients of that batch; then
    `steps` AdamW steps run on the same batch, recording losses[i] = the loss at step i before
    its update (so losses[0] is the debug state's loss). The computation runs in compute_dtype
    (float64 by default, starting from the same fp32 parameters that the file holds); the files
    are fp32.
    """
    if config.max_seq_len < T:
        raise ValueError(f"write_parity_fixture: T={T} > max_seq_len {config.max_seq_len}")
    if B <= 0 or T <= 0 or steps < 0:
        raise ValueError(f"write_parity_fixture: need B, T > 0 and steps >= 0 (B={B} T={T})")
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, model_filename)
    debug_state_path = os.path.join(out_dir, debug_state_filename)

    model32 = GPT2.from_config(config, seed, dtype=torch.float32)
    model32.save_checkpoint(model_path, dtype="float32")
    model = GPT2(config, compute_dtype)
    model.load_numpy(model32.params_numpy())
    del model32

    x_np, y_np = random_batch(config, B, T, seed + 1)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    logits, loss = model(x, y)
    assert loss is not None
    loss.backward()
    grads = {name: grad.astype(np.float32) for name, grad in model.grads_numpy().items()}
    state = DebugState(
        x=x_np,
        y=y_np,
        # llm.c's debug state holds the V real logit columns only; keep that layout so its own
        # test_gpt2 can read our fixtures (the padded columns are never predicted anyway)
        logits=logits[..., : config.vocab_size].detach().numpy().astype(np.float32),
        loss=float(loss.item()),
        grads=grads,
    )
    write_debug_state(debug_state_path, state, config)
    del logits, loss, grads, state

    optimizer = model.configure_optimizer(
        learning_rate, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay
    )
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        assert loss is not None
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))

    reference = ReferenceLosses(
        learning_rate=learning_rate,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        losses=losses,
    )
    write_losses_sidecar(debug_state_path, reference)
    return ParityFixture(
        model_path=model_path,
        debug_state_path=debug_state_path,
        losses_path=losses_sidecar_path(debug_state_path),
        losses=losses,
    )


# ------------------------------------------------------------------------------------------------
# command line


def _config_from_args(args: argparse.Namespace) -> GPT2Config:
    shape_flags = (args.layers, args.heads, args.channels)
    vocab = args.vocab if args.vocab is not None else GPT2_VOCAB_SIZE
    padded = args.padded_vocab if args.padded_vocab is not None else padded_vocab_size(vocab)
    max_seq_len = args.max_seq_len if args.max_seq_len is not None else GPT2_MAX_SEQ_LEN
    if any(flag is not None for flag in shape_flags):
        if args.depth is not None or None in shape_flags:
            raise ValueError("fixture: give either --depth, or all of --layers --heads --channels")
        layers, heads, channels = shape_flags
    else:
        base = GPT2Config.from_descriptor(f"d{args.depth if args.depth is not None else 12}")
        layers, heads, channels = base.num_layers, base.num_heads, base.channels
    return GPT2Config(
        max_seq_len=max_seq_len,
        vocab_size=vocab,
        num_layers=layers,
        num_heads=heads,
        channels=channels,
        padded_vocab_size=padded,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m llmc.reference fixture --out DIR [...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m llmc.reference", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fixture = commands.add_parser(
        "fixture",
        help="write a parity fixture (model, debug state, AdamW losses) for test_gpt2",
        description="Default: GPT-2 124M shapes (d12), B=4, T=64, files gpt2_124M.bin and "
        "gpt2_124M_debug_state.bin (llm.c's names; about 500 MB).",
    )
    fixture.add_argument("--out", required=True, help="output directory")
    fixture.add_argument("--depth", type=int, help="GPT-2 family depth (12 = 124M); default 12")
    fixture.add_argument("--layers", type=int, help="number of layers L (with --heads --channels)")
    fixture.add_argument("--heads", type=int, help="number of heads H")
    fixture.add_argument("--channels", type=int, help="channels C (a multiple of H)")
    fixture.add_argument("--max-seq-len", type=int, help=f"maxT (default {GPT2_MAX_SEQ_LEN})")
    fixture.add_argument("--vocab", type=int, help=f"vocabulary size V (default {GPT2_VOCAB_SIZE})")
    fixture.add_argument("--padded-vocab", type=int, help="Vp (default: V rounded up to 128)")
    fixture.add_argument("-B", type=int, default=4, help="batch size (default 4)")
    fixture.add_argument("-T", type=int, default=64, help="sequence length (default 64)")
    fixture.add_argument("--seed", type=int, default=1337, help="init and batch seed (1337)")
    fixture.add_argument("--steps", type=int, default=10, help="AdamW steps recorded (10)")
    fixture.add_argument("--lr", type=float, default=1e-4, help="learning rate (1e-4)")
    fixture.add_argument("--beta1", type=float, default=0.9)
    fixture.add_argument("--beta2", type=float, default=0.95)
    fixture.add_argument("--eps", type=float, default=1e-8)
    fixture.add_argument("--weight-decay", type=float, default=0.01, help="weight decay (0.01)")
    fixture.add_argument(
        "--compute-dtype", choices=sorted(_DTYPES), default="float64", help="(float64)"
    )
    fixture.add_argument(
        "--name",
        help="file name stem: NAME.bin and NAME_debug_state.bin (default gpt2_124M for the "
        "default d12 GPT-2 shapes, else model)",
    )
    args = parser.parse_args(argv)

    try:
        config = _config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    name = args.name
    if name is None:
        name = "gpt2_124M" if config == GPT2Config() else "model"
    fixture_paths = write_parity_fixture(
        args.out,
        config,
        args.B,
        args.T,
        args.seed,
        steps=args.steps,
        learning_rate=args.lr,
        beta1=args.beta1,
        beta2=args.beta2,
        eps=args.eps,
        weight_decay=args.weight_decay,
        compute_dtype=_DTYPES[args.compute_dtype],
        model_filename=f"{name}.bin",
        debug_state_filename=f"{name}_debug_state.bin",
    )
    print(f"model:       {fixture_paths.model_path}")
    print(f"debug state: {fixture_paths.debug_state_path}")
    print(f"losses:      {fixture_paths.losses_path}")
    print("              " + " ".join(f"{loss:.6f}" for loss in fixture_paths.losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
