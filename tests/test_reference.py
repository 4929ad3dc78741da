"""The PyTorch reference model against itself and against torch's own building blocks."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model needs torch (pip install torch)")

import torch
import torch.nn.functional as F

from llmc.config import DECAYED_PARAMETERS, PARAMETER_NAMES, GPT2Config
from llmc.formats import read_debug_state, read_losses_sidecar, read_model
from llmc.reference import (
    GPT2,
    main,
    padded_vocab_size,
    random_batch,
    write_parity_fixture,
)

# odd sizes on purpose: C/H = 32, T < maxT, V not a multiple of 128
SMALL = GPT2Config(
    max_seq_len=48, vocab_size=97, num_layers=2, num_heads=3, channels=96, padded_vocab_size=128
)


def rel_error(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64."""
    a64, ref64 = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a64 - ref64) / np.linalg.norm(ref64))


def batch(config: GPT2Config, B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = random_batch(config, B, T, seed)
    return torch.from_numpy(x), torch.from_numpy(y)


def with_random_padding(model: GPT2) -> GPT2:
    """Fills the padded wte rows with noise, so that using them anywhere would show."""
    with torch.no_grad():
        model.wte[model.config.vocab_size :].normal_(0.0, 1.0)
    return model


# ------------------------------------------------------------------------------------------------
# forward and loss


def test_float32_matches_float64() -> None:
    m32 = GPT2.from_config(SMALL, seed=1, dtype=torch.float32)
    m64 = GPT2.from_config(SMALL, seed=1, dtype=torch.float64)
    for name in PARAMETER_NAMES:  # same seed: the same numbers, whatever the dtype
        assert torch.equal(getattr(m32, name).double(), getattr(m64, name)), name
    x, y = batch(SMALL, 3, 33, seed=2)
    logits32, loss32 = m32(x, y)
    logits64, loss64 = m64(x, y)
    assert logits32.dtype == torch.float32 and logits64.dtype == torch.float64
    assert logits32.shape == (3, 33, SMALL.padded_vocab_size)
    err = rel_error(logits32.detach().numpy(), logits64.detach().numpy())
    assert err < 1e-5, f"logits float32 vs float64: relative error {err:.2e}"
    assert loss32 is not None and loss64 is not None
    assert abs(loss32.item() - loss64.item()) / loss64.item() < 1e-6


def test_loss_is_cross_entropy_over_real_vocab() -> None:
    model = with_random_padding(GPT2.from_config(SMALL, seed=3, dtype=torch.float64))
    x, y = batch(SMALL, 2, 20, seed=4)
    logits, loss = model(x, y)
    assert loss is not None
    V = SMALL.vocab_size
    expected = F.cross_entropy(logits[..., :V].reshape(-1, V), y.long().reshape(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # by hand: mean over positions of logsumexp(real logits) - logit of the target
    real = logits[..., :V].detach().numpy()
    top = real.max(axis=-1, keepdims=True)
    logsumexp = np.log(np.exp(real - top).sum(axis=-1)) + top[..., 0]
    target_logit = np.take_along_axis(real, y.long().numpy()[..., None], axis=-1)[..., 0]
    assert loss.item() == pytest.approx(float(np.mean(logsumexp - target_logit)), rel=1e-12)
    # the padded columns are computed (random rows give non-zero logits) but never enter the loss
    assert logits[..., V:].abs().max().item() > 0.0
    full = F.cross_entropy(logits.reshape(-1, SMALL.padded_vocab_size), y.long().reshape(-1))
    assert abs(full.item() - loss.item()) > 1e-3


def test_padded_wte_rows_get_zero_gradient() -> None:
    model = with_random_padding(GPT2.from_config(SMALL, seed=5, dtype=torch.float64))
    x, y = batch(SMALL, 2, 16, seed=6)
    _, loss = model(x, y)
    assert loss is not None
    loss.backward()
    grad = model.wte.grad
    assert grad is not None
    assert torch.count_nonzero(grad[SMALL.vocab_size :]).item() == 0
    assert torch.count_nonzero(grad[: SMALL.vocab_size]).item() > 0
    # a gradient for every parameter
    for name, g in model.grads_numpy().items():
        assert np.linalg.norm(g) > 0.0, name


def test_attention_is_causal() -> None:
    """Changing a later token never changes the logits of earlier positions."""
    model = GPT2.from_config(SMALL, seed=7, dtype=torch.float64)
    x, _ = batch(SMALL, 1, 24, seed=8)
    logits, _ = model(x)
    x2 = x.clone()
    x2[0, 10] = (x2[0, 10] + 1) % SMALL.vocab_size
    logits2, _ = model(x2)
    assert torch.equal(logits[0, :10], logits2[0, :10])
    assert not torch.equal(logits[0, 10], logits2[0, 10])


def test_forward_matches_torch_building_blocks() -> None:
    """One block built from torch's own modules (MultiheadAttention, GELU, LayerNorm)."""
    config = GPT2Config(
        max_seq_len=16, vocab_size=50, num_layers=1, num_heads=2, channels=16, padded_vocab_size=128
    )
    model = GPT2.from_config(config, seed=9, dtype=torch.float64)
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases
        for name in ("ln1w", "ln1b", "qkvb", "attprojb", "ln2w", "ln2b", "fcb", "fcprojb"):
            getattr(model, name).normal_(0.5, 0.1)
    x, _ = batch(config, 2, 11, seed=10)
    logits, _ = model(x)

    C, H, T = config.channels, config.num_heads, 11
    ln1 = torch.nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)
    ln2 = torch.nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)
    lnf = torch.nn.LayerNorm(C, eps=1e-5, dtype=torch.float64)
    attn = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ln1.weight.copy_(model.ln1w[0])
        ln1.bias.copy_(model.ln1b[0])
        ln2.weight.copy_(model.ln2w[0])
        ln2.bias.copy_(model.ln2b[0])
        lnf.weight.copy_(model.lnfw)
        lnf.bias.copy_(model.lnfb)
        attn.in_proj_weight.copy_(model.qkvw[0])
        attn.in_proj_bias.copy_(model.qkvb[0])
        attn.out_proj.weight.copy_(model.attprojw[0])
        attn.out_proj.bias.copy_(model.attprojb[0])
        h = model.wte[x.long()] + model.wpe[:T]
        a = ln1(h)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = not allowed
        h = h + attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        m = F.linear(ln2(h), model.fcw[0], model.fcb[0])
        m = torch.nn.GELU(approximate="tanh")(m)
        h = h + F.linear(m, model.fcprojw[0], model.fcprojb[0])
        expected = lnf(h) @ model.wte.T
    err = rel_error(logits.detach().numpy(), expected.numpy())
    assert err < 1e-12, f"relative error {err:.2e}"


def test_gelu_is_the_tanh_approximation() -> None:
    """F.gelu(approximate="tanh"), as used by forward, is the formula the C engine computes."""
    x = torch.linspace(-6.0, 6.0, 1001, dtype=torch.float64)
    formula = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    assert torch.allclose(F.gelu(x, approximate="tanh"), formula, rtol=0, atol=1e-15)
    assert not torch.allclose(F.gelu(x), formula, rtol=0, atol=1e-6)  # not the erf GELU


def test_bad_inputs_raise() -> None:
    model = GPT2.from_config(SMALL, seed=0)
    x, y = batch(SMALL, 1, 8, seed=0)
    with pytest.raises(ValueError, match="outside"):
        model(torch.full((1, 8), SMALL.vocab_size, dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros((1, SMALL.max_seq_len + 1), dtype=torch.int32))
    with pytest.raises(ValueError, match="targets shape"):
        model(x, y[:, :4])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(x[0])
    with pytest.raises(ValueError, match="dtype"):
        GPT2(SMALL, dtype=torch.float16)


# ------------------------------------------------------------------------------------------------
# init


def test_init_statistics() -> None:
    config = GPT2Config(
        max_seq_len=256, vocab_size=1000, num_layers=4, num_heads=4, channels=128,
        padded_vocab_size=1024,
    )  # fmt: skip
    model = GPT2.from_config(config, seed=11)
    params = model.params_numpy()
    projection_std = 0.02 / math.sqrt(2 * config.num_layers)
    expected_std = {
        "wte": 0.02, "wpe": 0.02, "qkvw": 0.02, "fcw": 0.02,
        "attprojw": projection_std, "fcprojw": projection_std,
    }  # fmt: skip
    assert set(expected_std) == DECAYED_PARAMETERS
    for name, std in expected_std.items():
        values = params[name][: config.vocab_size] if name == "wte" else params[name]
        assert np.std(values) == pytest.approx(std, rel=0.03), name
        assert abs(np.mean(values)) < 0.1 * std, name
    assert not params["wte"][config.vocab_size :].any(), "padded wte rows must be zero"
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(params[name] == 1.0), name
    for name in ("ln1b", "ln2b", "qkvb", "attprojb", "fcb", "fcprojb", "lnfb"):
        assert not params[name].any(), name
    for name, shape in config.parameter_shapes().items():
        assert params[name].shape == shape and params[name].dtype == np.float32, name


def test_init_is_seeded() -> None:
    a = GPT2.from_config(SMALL, seed=42).params_numpy()
    b = GPT2.from_config(SMALL, seed=42).params_numpy()
    c = GPT2.from_config(SMALL, seed=43).params_numpy()
    for name in PARAMETER_NAMES:
        assert np.array_equal(a[name], b[name]), name
    for name in DECAYED_PARAMETERS:
        assert not np.array_equal(a[name], c[name]), name


# ------------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip_fp32(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "model.bin")
    model = with_random_padding(GPT2.from_config(SMALL, seed=12))
    model.save_checkpoint(path)
    config, params = read_model(path)
    assert config == SMALL
    loaded = GPT2.from_checkpoint(path)
    assert loaded.config == SMALL
    for name, array in model.params_numpy().items():
        assert np.array_equal(params[name], array), name
        assert np.array_equal(loaded.params_numpy()[name], array), name
    as64 = GPT2.from_checkpoint(path, dtype=torch.float64)
    assert as64.dtype == torch.float64
    assert np.array_equal(
        as64.params_numpy()["fcw"], model.params_numpy()["fcw"].astype(np.float64)
    )


def test_checkpoint_round_trip_bf16(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "model_bf16.bin")
    model = GPT2.from_config(SMALL, seed=13)
    model.save_checkpoint(path, dtype="bfloat16")
    assert os.path.getsize(path) == 1024 + 2 * SMALL.num_parameters()
    loaded = GPT2.from_checkpoint(path).params_numpy()
    for name, array in model.params_numpy().items():
        expected = torch.from_numpy(array).to(torch.bfloat16).float().numpy()  # torch's rounding
        assert np.array_equal(loaded[name], expected), name
        # within half a bf16 unit in the last place (8 significant bits)
        assert np.all(np.abs(loaded[name] - array) <= np.abs(array) * 2.0**-8), name
    with pytest.raises(ValueError, match="dtype"):
        model.save_checkpoint(path, dtype="float16")


def test_load_numpy_checks_shapes() -> None:
    model = GPT2(SMALL)
    params = GPT2.from_config(SMALL, seed=0).params_numpy()
    params["fcw"] = params["fcw"][:, :-1]
    with pytest.raises(ValueError, match="fcw"):
        model.load_numpy(params)
    del params["fcw"]
    with pytest.raises(ValueError, match="missing"):
        model.load_numpy(params)


# ------------------------------------------------------------------------------------------------
# optimizer


def test_optimizer_groups() -> None:
    model = GPT2.from_config(SMALL, seed=14)
    optimizer = model.configure_optimizer(1e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, other = optimizer.param_groups
    by_id = {id(getattr(model, name)): name for name in PARAMETER_NAMES}
    assert {by_id[id(p)] for p in decayed["params"]} == DECAYED_PARAMETERS
    assert {by_id[id(p)] for p in other["params"]} == set(PARAMETER_NAMES) - DECAYED_PARAMETERS
    assert decayed["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    for group in (decayed, other):
        assert group["lr"] == 1e-3 and group["betas"] == (0.8, 0.9) and group["eps"] == 1e-7


def test_optimizer_matches_adamw_formula() -> None:
    """Two steps against AdamW written out in numpy (llm.c's update rule)."""
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    model = GPT2.from_config(SMALL, seed=15, dtype=torch.float64)
    optimizer = model.configure_optimizer(lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    params = model.params_numpy()
    m = {name: np.zeros_like(p) for name, p in params.items()}
    v = {name: np.zeros_like(p) for name, p in params.items()}
    x, y = batch(SMALL, 2, 12, seed=16)
    for step in (1, 2):
        optimizer.zero_grad()
        _, loss = model(x, y)
        assert loss is not None
        loss.backward()
        grads = model.grads_numpy()
        optimizer.step()
        for name in PARAMETER_NAMES:
            g = grads[name]
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat = m[name] / (1 - beta1**step)
            v_hat = v[name] / (1 - beta2**step)
            decay = wd if name in DECAYED_PARAMETERS else 0.0
            params[name] = params[name] - lr * (
                m_hat / (np.sqrt(v_hat) + eps) + decay * params[name]
            )
    for name, array in model.params_numpy().items():
        np.testing.assert_allclose(array, params[name], rtol=1e-12, atol=1e-14, err_msg=name)


# ------------------------------------------------------------------------------------------------
# fixtures


def test_parity_fixture_files(tmp_path: Path) -> None:
    out = str(tmp_path)
    fixture = write_parity_fixture(
        out, SMALL, B=2, T=20, seed=17, steps=4, learning_rate=1e-3, weight_decay=0.1
    )
    assert fixture.model_path == os.path.join(out, "model.bin")
    assert fixture.debug_state_path == os.path.join(out, "debug_state.bin")
    config, params = read_model(fixture.model_path)
    assert config == SMALL
    for name, array in GPT2.from_config(SMALL, seed=17).params_numpy().items():
        assert np.array_equal(params[name], array), name

    state = read_debug_state(fixture.debug_state_path, config)
    x, y = random_batch(SMALL, 2, 20, seed=18)
    assert np.array_equal(state.x, x) and np.array_equal(state.y, y)
    assert np.array_equal(state.x[:, 1:], state.y[:, :-1])  # targets are the next tokens
    model = GPT2.from_checkpoint(fixture.model_path, dtype=torch.float64)
    logits, loss = model(torch.from_numpy(x), torch.from_numpy(y))
    assert loss is not None
    loss.backward()
    # written like llm.c's: only the V real columns
    assert state.logits.shape == (2, 20, SMALL.vocab_size)
    assert rel_error(state.logits, logits[..., : SMALL.vocab_size].detach().numpy()) < 1e-7
    assert state.loss == pytest.approx(loss.item(), rel=1e-7)
    for name, grad in model.grads_numpy().items():
        assert rel_error(state.grads[name], grad) < 1e-6, name

    reference = read_losses_sidecar(fixture.debug_state_path)
    assert reference is not None
    assert (reference.learning_rate, reference.weight_decay) == (1e-3, 0.1)
    assert (reference.beta1, reference.beta2, reference.eps) == (0.9, 0.95, 1e-8)
    assert reference.losses == pytest.approx(fixture.losses, rel=1e-12)
    assert len(reference.losses) == 4
    assert reference.losses[0] == pytest.approx(state.loss, rel=1e-6)  # before the first update
    assert all(b < a for a, b in zip(reference.losses, reference.losses[1:]))


def test_fixture_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path)
    args = ["fixture", "--out", out, "--layers", "1", "--heads", "2", "--channels", "32"]
    args += ["--max-seq-len", "16", "--vocab", "130", "-B", "2", "-T", "8", "--steps", "2"]
    assert main(args) == 0
    config, _ = read_model(os.path.join(out, "model.bin"))
    assert config == GPT2Config(
        max_seq_len=16, vocab_size=130, num_layers=1, num_heads=2, channels=32,
        padded_vocab_size=256,
    )  # fmt: skip
    state = read_debug_state(os.path.join(out, "model_debug_state.bin"), config)
    assert state.x.shape == (2, 8)
    reference = read_losses_sidecar(os.path.join(out, "model_debug_state.bin"))
    assert reference is not None and len(reference.losses) == 2
    assert "model_debug_state.bin" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a partial shape is an error, not a silent default
        main(["fixture", "--out", out, "--layers", "2"])


def test_padded_vocab_size() -> None:
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(128) == 128
    assert padded_vocab_size(97) == 128
