"""Regression tests for four numerics defects found by an independent check.

1. k-bit (k < 8) asymmetric per-tensor quantization left its grid on sign-symmetric ranges
   (the CPU int8 fast path clamped codes at 255, not 2^k - 1); the packed export then failed and
   clipped asymmetric activations came back beyond the clip.
2. TernaryRecipe above 2 bits did not clip weights to ±2.5 (the official SymQuantizer does).
3. The size report counted zero points at k bits while the export stored int32, and left out the
   EMA observers' activation-range buffers.
4. The I-BERT comparison checked only the scale, never the integer codes.

Where an API differs between the code before the fixes and now (export signature, bit-assignment
config, ``Target``'s module), a small adapter picks the one present, so that the same assertion
runs on both; the adapters are marked as such.
"""

from __future__ import annotations

import inspect
import json
import struct

import pytest
import torch
from torch import nn
from transformers.models.ibert.quant_modules import (
    SymmetricQuantFunction,
    linear_quantize,
    symmetric_linear_quantization_params,
)

from lowbit.algorithms.ternarybert import TernaryRecipe
from lowbit.quant import ActivationQuantizer, PerRow, PerTensor, UniformWeightQuantizer, quantize_, uniform_bits
from lowbit.quant import functional as Fq
from lowbit.quant.recipes import ActivationSpec, UniformRecipe

try:  # adapter: the roles module moved (the constructor has the same 4 fields)
    from lowbit.roles import Target
    ATTENTION_ROLE = "attention.query"
except ImportError:  # code before the fixes
    from lowbit.quant.targets import Target
    ATTENTION_ROLE = "attention"


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _new_export_api() -> bool:
    from lowbit.export import export_packed

    return "method_configs" in inspect.signature(export_packed).parameters


def _export(model, out_dir, quantizer_cfg: dict, bits: int):
    """Adapter over the two ``export_packed`` signatures (method-config dict now, two dicts before)."""
    from lowbit.export import export_packed

    if _new_export_api():
        bit_cfg = {"_target_": "lowbit.quant.PerModuleBits", "bits": bits}
        return export_packed(model, out_dir, {"quantizer": quantizer_cfg, "bit_assignment": bit_cfg})
    bit_cfg = {"_target_": "lowbit.quant.uniform_bits", "bits": bits}
    return export_packed(model, out_dir, quantizer_cfg, bit_cfg)


def _safetensors_payload_bytes(path) -> int:
    """Bytes of the tensors of a safetensors file: 8-byte little-endian header length, JSON header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")


def _asymmetric_reference(grouped: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's definition per row of [G, N]: min/max include 0, scale = (max-min)/(2^k-1), z = round(-min/s)."""
    lo = grouped.amin(dim=1, keepdim=True).clamp(max=0.0)
    hi = grouped.amax(dim=1, keepdim=True).clamp(min=0.0)
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
    return scale, torch.round(-lo / scale)


def _sign_symmetric(shape, generator) -> torch.Tensor:
    """Random weight whose every row has min == -max (a sign-symmetric range per row and per tensor)."""
    w = torch.randn(shape, generator=generator)
    amax = w.abs().amax(dim=1) * 1.25
    w[:, 0], w[:, 1] = -amax, amax
    return w


# --------------------------------------------------------------------------------------------------
# defect 1: asymmetric k-bit quantization stays on its grid
# --------------------------------------------------------------------------------------------------
def test_two_bit_asymmetric_repro_stays_on_grid():
    """Defect 1 (repro): 2-bit asymmetric per-tensor on [-1.5, 1.5] must not return +2 (grid is {-2, -1, 0, 1}).

    Before the fix the CPU int8 fast path clamped the code at 255, so 1.5 got code 4 -> value 2.0.
    """
    q = UniformWeightQuantizer(2, granularity=PerTensor())(torch.tensor([[-1.5, -0.2, 0.0, 0.4, 1.5]]))
    # scale = 3/3 = 1, zero point = round(1.5) = 2 (half to even): codes 0..3 -> values -2..1
    assert q.tolist() == [[-2.0, 0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7])
def test_asymmetric_output_is_on_the_k_bit_grid(bits):
    """Defect 1: every output of k-bit asymmetric quantization is one of the 2^k grid values,
    per tensor and per row, on sign-symmetric and on random ranges.

    Checked from the definition: codes = out/scale + z are integers in [0, 2^k - 1] with
    scale = (max - min)/(2^k - 1) (max/min including 0) and z = round(-min/scale). Before the fix,
    per-tensor sign-symmetric ranges produced code 2^k at every k < 8 (per-row ranges took the
    elementwise path and were right).
    """
    gen = torch.Generator().manual_seed(bits)
    for granularity in ("per_tensor", "per_row"):
        for data in ("sign_symmetric", "random"):
            for trial in range(4):
                case = f"{granularity}, {data}, trial {trial}"
                shape = (7 + 2 * trial, 33 + trial)
                w = (_sign_symmetric(shape, gen) if data == "sign_symmetric"
                     else torch.randn(shape, generator=gen) * 0.3 + 0.1)
                g = PerTensor() if granularity == "per_tensor" else PerRow()
                q = UniformWeightQuantizer(bits, symmetric=False, granularity=g)(w)
                grouped_w = w.reshape(1, -1) if granularity == "per_tensor" else w
                grouped_q = q.reshape(1, -1) if granularity == "per_tensor" else q
                scale, zero = _asymmetric_reference(grouped_w, bits)
                codes = grouped_q.double() / scale.double() + zero.double()
                rounded = codes.round()
                assert (codes - rounded).abs().max().item() < 1e-3, f"{case}: a value is off the grid"
                assert rounded.min().item() >= 0, f"{case}: code {rounded.min().item()} below the {bits}-bit grid"
                assert rounded.max().item() <= 2**bits - 1, \
                    f"{case}: code {rounded.max().item()} above the {bits}-bit grid [0, {2**bits - 1}]"
                assert max(row.unique().numel() for row in grouped_q) <= 2**bits, case


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("mode", ["dynamic", "ema"])
def test_clipped_asymmetric_activation_stays_within_clip(bits, mode):
    """Defect 1: an asymmetric activation quantizer with clip 2.5 never returns values beyond ±2.5.

    Before the fix, 4-bit returned ±2.667 for inputs at ±2.5 (zero point rounded by half a step, and
    the int8 fast path did not clamp at 2^k - 1); 8-bit returned -2.5098.
    """
    clip = 2.5
    gen = torch.Generator().manual_seed(bits)
    quant = ActivationQuantizer(bits=bits, symmetric=False, mode=mode, clip=clip).train()
    for trial in range(9):
        x = torch.randn(3, 5, 17, generator=gen) * 2.0
        x.view(-1)[:4] = torch.tensor([clip, -clip, 10.0, -10.0])  # exactly at the clip, and far beyond
        if trial % 3 == 1:
            x = x.abs()  # one-sided range (zero point at 0) mixed in
            x.view(-1)[0] = clip
        elif trial % 3 == 2:
            # range [-2.5, 0.95]: clip/scale = 184.78 (8 bits), 10.87 (4 bits), so the zero point rounds up
            # and -2.5 lands on code 0 = -zero_point·scale < -2.5 unless the grid is cut at the clip
            x = x.clamp(-clip, 0.95)
            x.view(-1)[:2] = torch.tensor([-clip, 0.95])
        out = quant(x)
        assert out.abs().max().item() <= clip + 1e-6, f"{out.abs().max().item()} beyond clip {clip}"
    quant.eval()  # EMA: frozen range in eval too
    x = torch.linspace(-4, 4, 801)
    assert quant(x).abs().max().item() <= clip + 1e-6


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_round_to_grid_fast_path_equals_elementwise_definition():
    """Defect 1 ("one path, one grid"): the CPU int8 fast path of ``_round_to_grid`` gives the same codes
    as the elementwise definition round(fma(x, 1/s, z)) clamped to [0, 255], bit for bit.

    Float32 CPU tensors, per-tensor scale, 8-bit asymmetric (zero point tensor): the case that takes
    ``torch.quantize_per_tensor``. This test also passes on the code before the fixes (it used the fast
    path here too); it guards the claim that the two paths are one grid.
    """
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 2, 3, 7, 31, 33, 255, 257, 1000, 1023, 4097, 10007]
    for trial in range(60):
        n = sizes[trial % len(sizes)]
        x = torch.randn(1, n, generator=gen) * float(torch.rand(1, generator=gen) * 5 + 1e-3)
        x += float(torch.randn(1, generator=gen))
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = torch.tensor([[max((hi - lo) / 255, 1e-8)]], dtype=torch.float32)
        zero = torch.round(torch.tensor([[-lo]]) / scale).clamp(0, 255)
        if trial % 3 == 2:  # near-ties: values half a step off the grid, where two roundings differ from one
            codes = torch.randint(0, 255, (1, n), generator=gen).float()
            x = (codes - zero + 0.5) * scale
        if trial % 5 == 4:  # saturation: a tighter range than the data
            scale = scale * 0.5
        out = Fq._round_to_grid(x, scale, zero, 0, 255)
        q = torch.addcmul(zero, x, scale.reciprocal()).round().clamp(0, 255)
        expected = (q - zero) * scale
        assert out.dtype == torch.float32
        assert torch.equal(out, expected), f"n={n}: {(out != expected).sum().item()} values differ"


def test_packed_export_of_sign_symmetric_two_bit_weights_round_trips(tiny_model, batch, tmp_path):
    """Defect 1: a 2-bit asymmetric per-tensor weight with a sign-symmetric range exports and reloads exactly.

    Before the fix the exporter failed with ``code out of range`` (code 4 in a 2-bit stream). Uses the
    new API (``export_packed(model, dir, {"quantizer": ..., "bit_assignment": ...})``, ``load_packed``);
    ``_export`` adapts the call to the old signature so the old failure shows too.
    """
    from lowbit import load_packed

    model = tiny_model("bert")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # before quantize_, so no cached effective weight is stale
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".layer." in name:
                module.weight.copy_(_sign_symmetric(module.weight.shape, gen) * 0.05)
                flat = module.weight.view(-1)
                assert flat.min().item() == -flat.max().item()
    q_cfg = {"_target_": "lowbit.quant.UniformRecipe", "symmetric": False, "granularity": "per_tensor",
             "activation": None}
    quantize_(model, UniformRecipe(symmetric=False, granularity="per_tensor", activation=None), uniform_bits(2))
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    _export(model, tmp_path / "art", q_cfg, 2)
    loaded = load_packed(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


# --------------------------------------------------------------------------------------------------
# defect 2: TernaryBERT's symmetric quantizer above 2 bits clips to ±2.5
# --------------------------------------------------------------------------------------------------
def _sym_quantizer_reference(w: torch.Tensor, bits: int, clip: float) -> torch.Tensor:
    """The official TernaryBERT SymQuantizer (utils_quant.py, layerwise): clamp to [-clip, clip],
    s = (2^(b-1) - 1) / max|clamped|, output = round(clamped·s) / s."""
    clamped = torch.where(w < clip, w, torch.tensor(clip))
    clamped = torch.where(clamped > -clip, clamped, torch.tensor(-clip))
    s = (2 ** (bits - 1) - 1) / clamped.abs().max()
    return torch.round(clamped * s).div(s)


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_ternary_recipe_above_two_bits_clips_like_sym_quantizer(bits):
    """Defect 2: ``TernaryRecipe().weight_quantizer(target, k)`` for k > 2 clamps weights to ±2.5 first
    (values equal the official SymQuantizer's) and the gradient is 0 outside the clip, 1 inside."""
    torch.manual_seed(bits)
    linear = nn.Linear(24, 16)
    target = Target("bert.encoder.layer.0.attention.self.query", ATTENTION_ROLE, 0, linear)
    quantizer = TernaryRecipe().weight_quantizer(target, bits)
    w = torch.randn(16, 24) * 1.5
    w[0, :4] = torch.tensor([3.0, -4.0, 2.6, -7.5])  # beyond the clip
    w = w.requires_grad_(True)
    out = quantizer(w)
    clip = 2.5
    assert out.abs().max().item() <= clip + 1e-6, f"max |q| = {out.abs().max().item()}: weights not clipped to ±2.5"
    expected = _sym_quantizer_reference(w.detach(), bits, clip)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-6)
    out.sum().backward()
    outside = w.detach().abs() > clip
    assert outside.sum().item() >= 4
    assert torch.equal(w.grad, (~outside).float()), "STE gradient must be 0 outside ±2.5 and 1 inside"


# --------------------------------------------------------------------------------------------------
# defect 3: size report == exported payload (k-bit zero points, EMA buffers)
# --------------------------------------------------------------------------------------------------
def _ema_group_model(tiny_model, batch, activation: bool):
    model = tiny_model("bert")
    spec = ActivationSpec(bits=8, symmetric=False, mode="ema", clip=None) if activation else None
    quantize_(model, UniformRecipe(granularity="group", n_groups=4, activation=spec), uniform_bits(3))
    model.train()
    with torch.no_grad():
        for _ in range(2):  # EMA observers get state
            model(**batch)
    return model.eval()


def test_size_report_equals_exported_payload_with_zero_points_and_ema_buffers(tiny_model, batch, tmp_path):
    """Defect 3: ``size_report(model).total_bits`` is 8 × the byte payload of the exported model.safetensors
    for 3-bit asymmetric group-wise weights with 8-bit asymmetric EMA activations, and it includes the
    observers' running_min/running_max/initialized buffers.

    Before the fix the report counted zero points at 3 bits while the export wrote int32, and it left
    out the EMA buffers (``_export`` adapts to the old ``export_packed(model, out, q_cfg, b_cfg)``).
    """
    from lowbit.quant import size_report

    q_cfg = {"_target_": "lowbit.quant.UniformRecipe", "symmetric": False, "granularity": "group", "n_groups": 4,
             "activation": {"bits": 8, "symmetric": False, "mode": "ema", "clip": None}}
    model = _ema_group_model(tiny_model, batch, activation=True)
    observers = [m for m in model.modules() if isinstance(m, ActivationQuantizer) and m.mode == "ema"]
    assert observers and all(bool(m.initialized) for m in observers)
    _export(model, tmp_path / "art", q_cfg, 3)
    payload_bits = 8 * _safetensors_payload_bytes(tmp_path / "art" / "model.safetensors")
    report_bits = size_report(model).total_bits
    assert report_bits == payload_bits, f"size_report {report_bits} bits != exported payload {payload_bits} bits"
    # the EMA buffers are what separates it from the same model without activation quantization
    plain = _ema_group_model(tiny_model, batch, activation=False)
    buffer_bits = sum(8 * b.numel() * b.element_size() for m in observers for b in
                      (m.running_min, m.running_max, m.initialized))
    assert buffer_bits == len(observers) * (32 + 32 + 8)
    assert report_bits - size_report(plain).total_bits == buffer_bits


# --------------------------------------------------------------------------------------------------
# defect 4: integer codes against transformers' I-BERT quant_modules
# --------------------------------------------------------------------------------------------------
def test_symmetric_per_row_codes_match_ibert_except_its_asymmetric_clamp():
    """Defect 4: lowbit's 8-bit symmetric per-row codes equal I-BERT's ``SymmetricQuantFunction`` codes.

    I-BERT clamps codes to [-(2^(k-1)-1), 2^(k-1)-2] = [-127, 126]; lowbit deliberately keeps the
    symmetric grid [-127, 127], so max|w| (the row max) is representable. The codes are therefore equal
    everywhere except where lowbit's code is +127, where I-BERT gives 126. (This also passes on the code
    before the fixes; the README's claim was only backed by a scale comparison until now.)
    """
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    w[3] = -w[3]  # rows whose max|w| is negative too
    scale = symmetric_linear_quantization_params(8, w.min(dim=1).values, w.max(dim=1).values, per_channel=True)
    q = UniformWeightQuantizer(8, symmetric=True, granularity=PerRow())(w)
    lowbit_codes = torch.round(q / scale.view(-1, 1))
    assert torch.equal(lowbit_codes * scale.view(-1, 1), q)  # q really is codes × the I-BERT scale
    ibert_codes = SymmetricQuantFunction.apply(w, 8, False, scale)
    assert lowbit_codes.min() >= -127 and lowbit_codes.max() <= 127
    top = lowbit_codes == 127
    assert top.any(dim=1).sum() > 0  # the row max of positive-max rows
    assert torch.equal(lowbit_codes[~top], ibert_codes[~top])
    assert (ibert_codes[top] == 126).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_rounding_on_exact_ties_matches_ibert_linear_quantize(symmetric):
    """Defect 4: on exact .5 ties lowbit's codes equal I-BERT's ``linear_quantize`` = round(1/s·x + z)
    (round half to even), per tensor (the CPU int8 fast path at 8 bits) and per row.

    Power-of-two scales make x·(1/s) + z exact, so every tie is a true tie for both formulas.
    """
    s = 2.0**-5
    n_codes = 80
    if symmetric:  # max|w| = 127·s: scale exactly s
        ties = (torch.arange(-n_codes, n_codes) + 0.5) * s
        w = torch.cat([torch.tensor([-127 * s, 127 * s]), ties]).reshape(1, -1)
        zero = torch.zeros(1)
    else:  # min = -100·s, max = 155·s: scale (255·s)/255 = s exactly, zero point 100
        ties = (torch.arange(-n_codes, n_codes) + 0.5) * s
        w = torch.cat([torch.tensor([-100 * s, 155 * s]), ties]).reshape(1, -1)
        zero = torch.tensor([100.0])
    scale = torch.tensor([s])
    ibert = linear_quantize(w, scale, zero)
    for g, weight in ((PerTensor(), w), (PerRow(), w.repeat(3, 1))):
        q = UniformWeightQuantizer(8, symmetric=symmetric, granularity=g)(weight)
        codes = q / s + zero.item()
        assert torch.equal(codes, codes.round())
        assert torch.equal(codes, ibert.expand_as(codes)), f"{type(g).__name__}: ties rounded differently"
    assert (ibert.remainder(2) == 0)[0, 2:].all()  # ties went to even: the test really exercises ties
