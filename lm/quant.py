"""Weight-only quantization (the text decoder, and the audio tower for memory): int8 per output channel,
int4 in groups along the input.

Decoding one token reads every decoder matrix and the tied 262400 x 2048 output head once, so on a CPU it
is bound by memory bandwidth; int8 weights halve the bytes read per token against bf16, int4 quarter them.
Activations stay float: a quantized matrix multiplies float inputs and returns float outputs in their dtype.

Kernels. On the CPU the products run in PyTorch's fused weight-only kernels, which dequantize inside the
matmul: `_weight_int8pack_mm` (int8 codes [N, K], one scale per output row) and
`_weight_int4pack_mm_for_cpu` (codes 0..15 packed by `_convert_weight_to_int4pack_for_cpu`, with
`scales_and_zeros` [K/group, N, 2] meaning w = (q - 8) * scale + zero), scales in the input's dtype.
Measured on one core for an 8192 x 2048 matrix and one row of input: bf16 float 2.5 ms, int8 1.1 ms,
int4 0.9 ms. Their float32 paths are scalar code (int8 17 ms, int4 29 ms against 3.8 ms for the fp32
matmul), so float32 inputs enter the kernels as bf16 and the result returns as float32 (int8 1.7 ms,
int4 1.0 ms): a quantized product then rounds its input to bf16 (about 0.3 % relative), on top of the
weights' own rounding. The int8 kernel's cost grows with the rows of input (0.45 ms a row here); beyond
KERNEL_MAX_ROWS (prefill) the codes are converted to the input dtype and multiplied by BLAS instead
(16 ms + the float matmul; 200 rows in bf16: 49 ms against 31 ms float). The int4 kernel is used for
any number of rows (200 rows: 78 ms; unpacking its layout for BLAS costs more).
Elsewhere (CUDA, ...) the weight is dequantized to the input dtype for each call and multiplied with
F.linear: correct, but not faster than float. PyTorch's CUDA `_weight_int8pack_mm` is a naive
float32-only kernel, and its CUDA int4 kernel (tinygemm) wants bf16 on sm80+ with yet another packing,
so neither is used.

Tied embedding. `embed_tokens` is both the input embedding and the output head. One quantized copy
serves both: the head is a quantized matmul, the embedding gathers quantized rows and dequantizes only
those (`rows`). The CPU int4 packing interleaves rows in blocks of 64 (AVX-512) or 32 (AVX2, others), so
rows are found through a map obtained by packing probe matrices once per shape (`_cpu_nibble_slots`).

Tiny matrices (AltUp's coefficient and router matrices, anything the int4 kernel cannot take) stay float:
they are a rounding error of the bytes read and the router's tanh is sensitive.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

QUANT_MODES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 64  # 4.5 bits a weight with bf16 scale+zero (32: 5 bits, Gaussian error 7 % not 9 %)
INT8_MIN_FEATURES = 16  # smaller matrices (AltUp coefficients 4x4, 4x16; router 2048->4) stay float
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
KERNEL_MAX_ROWS = 48  # int8: up to about this many input rows the fused kernel beats convert + BLAS
# The CPU int8 kernel returns garbage (or crashes) unless in_features is a multiple of 16 (measured with
# torch 2.13 on AVX-512: K = 8, 24, 40, 72, 200 wrong; 16, 32, 48, ..., 208 right); other K use BLAS.
INT8_KERNEL_K_MULTIPLE = 16
CHUNK_ELEMENTS = 1 << 22  # quantize in row slices of about this many weights (16 MB of fp32 temporaries)
_BLOCK_ROWS = 64  # the CPU int4 packing works in row blocks of 64 or 32; both divide this
_aten = torch.ops.aten
RowsDone = Callable[[int, int], None]  # told (start, end) once rows [start, end) are quantized


def _chunk_rows(k: int) -> int:
    """Rows per quantization slice: a multiple of 64 (whole blocks of the CPU int4 packing)."""
    return max(_BLOCK_ROWS, CHUNK_ELEMENTS // k // _BLOCK_ROWS * _BLOCK_ROWS)


def check_mode(mode: str | None) -> str | None:
    """None (float) or one of QUANT_MODES; anything else is a ValueError naming the allowed values."""
    if mode is None or mode in QUANT_MODES:
        return mode
    raise ValueError(f"unknown quantization {mode!r}; expected one of {', '.join(QUANT_MODES)} (or none)")


class QuantizedWeight(nn.Module):
    """A weight-only quantized [out_features, in_features] matrix, used like a bias-free nn.Linear:
    `forward(x) = x @ W.T`. `rows(ids)` gives W[ids] dequantized (the embedding's use of the tied
    matrix). The codes live in the buffer `weight`, so `.weight.device` answers as for a float module."""

    in_features: int
    out_features: int

    @property
    def compute_dtype(self) -> torch.dtype:
        """The float dtype the matrix stands for (its scales' dtype; follows `.to(dtype)`)."""
        raise NotImplementedError

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        """The whole matrix in `compute_dtype` (tests and the non-CPU fallback)."""
        step = _chunk_rows(self.in_features)
        parts = [self.rows(torch.arange(s, min(s + step, self.out_features), device=self.weight.device))
                 for s in range(0, self.out_features, step)]
        return torch.cat(parts)

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(device=x.device, dtype=x.dtype))

    # ---- width prefixes (MatFormer sub-models, lm.submodel) ------------------------------------------
    def forward_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """x @ W[:n].T: the first n outputs (an FFN's gate/up at width n). Default: all outputs, cut."""
        return self(x)[..., :n]

    def forward_cols(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., k] @ W[:, :k].T for k = x.shape[-1] <= in_features (an FFN's down projection at width k).

        The input is padded with zeros to in_features and goes through the full kernel: a zero input adds
        exactly zero, so this is the product with the first k columns, with no copy of the codes (the fused
        kernels need contiguous codes, and W[:, :k] is not). It reads the whole matrix, though."""
        k = x.shape[-1]
        if k == self.in_features:
            return self(x)
        return self(F.pad(x, (0, self.in_features - k)))

    def _kernel_ok(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and self.weight.device.type == "cpu" and x.dtype in _KERNEL_DTYPES


def _kernel_input(x2: torch.Tensor) -> torch.Tensor:
    """The kernels' float32 paths are scalar code: float32 inputs go in as bf16 (see the module notes)."""
    return (x2.to(torch.bfloat16) if x2.dtype == torch.float32 else x2).contiguous()


class Int8Weight(QuantizedWeight):
    """Symmetric int8, one scale per output row: w[n, k] ~ q[n, k] * scale[n], |q| <= 127."""

    def __init__(self, weight: torch.Tensor, on_rows: RowsDone | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        dtype = weight.dtype
        codes = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scales = torch.empty(self.out_features, dtype=dtype, device=weight.device)
        step = _chunk_rows(self.in_features)
        with torch.no_grad():
            for s in range(0, self.out_features, step):
                w = weight[s:s + step].float()
                # The scale as stored (rounded to the model dtype) is the one the codes are computed with.
                sc = (w.abs().amax(dim=1) / 127).to(dtype)
                sc = torch.where(sc > 0, sc, torch.ones_like(sc))  # an all-zero row (or one below the dtype)
                codes[s:s + step] = torch.round(w / sc.float()[:, None]).clamp_(-127, 127).to(torch.int8)
                scales[s:s + step] = sc
                if on_rows is not None:
                    on_rows(s, s + w.shape[0])
        self.register_buffer("weight", codes)
        self.register_buffer("scales", scales)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.scales.dtype

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.weight.device)
        return (self.weight[ids].float() * self.scales[ids].float().unsqueeze(-1)).to(self.compute_dtype)

    def dequantize(self) -> torch.Tensor:
        return (self.weight.float() * self.scales.float()[:, None]).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, self.weight, self.scales)

    def forward_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        # One scale per row: the first n rows of codes and scales are the n-row matrix (contiguous views).
        return self._product(x, self.weight[:n], self.scales[:n])

    def forward_cols(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        if k == self.in_features or (self._kernel_ok(x) and x[..., 0].numel() <= KERNEL_MAX_ROWS):
            return super().forward_cols(x)  # zero-padded through the fused kernel
        # BLAS path: the strided view of the first k columns is converted (a temporary), never stored.
        return self._product(x, self.weight[:, :k], self.scales)

    def _product(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, codes.shape[1])
        if (self._kernel_ok(x) and x2.shape[0] <= KERNEL_MAX_ROWS and codes.is_contiguous()
                and codes.shape[1] % INT8_KERNEL_K_MULTIPLE == 0):
            kx = _kernel_input(x2)
            y = _aten._weight_int8pack_mm(kx, codes, scales.to(kx.dtype)).to(x.dtype)
        else:
            # The per-row scale factors out of the sum: scale the [M, N] output, not the [N, K] weight.
            y = F.linear(x2, codes.to(x.dtype)) * scales.to(device=x.device, dtype=x.dtype)
        return y.reshape(*lead, codes.shape[0])

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, int8 per channel, scales {self.compute_dtype}"


class Int4Weight(QuantizedWeight):
    """Asymmetric int4 in groups of `group_size` along the input: w ~ (q - 8) * scale + zero, q in 0..15,
    one (scale, zero) per group and output row, PyTorch's `scales_and_zeros` [K/group, N, 2] layout.

    Layout "cpu": codes packed for `_weight_int4pack_mm_for_cpu` (chosen for weights on the CPU).
    Layout "plain": two codes a byte, the even column in the low nibble (other devices; dequantized per call)."""

    def __init__(self, weight: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE, layout: str | None = None,
                 on_rows: RowsDone | None = None):
        super().__init__()
        n, k = weight.shape
        if not int4_supported(n, k, group_size):
            raise ValueError(f"int4 needs in_features divisible by the group size {group_size} and out_features "
                             f"by 16, got a [{n}, {k}] matrix")
        self.out_features, self.in_features, self.group_size = n, k, group_size
        self.layout = layout or ("cpu" if weight.device.type == "cpu" else "plain")
        if self.layout not in ("cpu", "plain"):
            raise ValueError(f"int4 layout {self.layout!r}: expected 'cpu' or 'plain'")
        dtype = weight.dtype
        groups = k // group_size
        packed = torch.empty(n, k // 2, dtype=torch.uint8, device=weight.device)
        sz = torch.empty(groups, n, 2, dtype=dtype, device=weight.device)
        with torch.no_grad():
            # Row slices are multiples of 64, so each slice packs into whole blocks of the CPU layout and
            # the packed slices concatenate to the packing of the whole matrix.
            for s in range(0, n, _chunk_rows(k)):
                w = weight[s:s + _chunk_rows(k)].float()
                rows = w.shape[0]
                wg = w.reshape(rows, groups, group_size)
                lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)
                scale = ((hi - lo) / 15).to(dtype)
                # A constant group (an all-zero row, say): a scale that makes it exact with q = 0.
                flat = torch.where(lo != 0, lo.abs() / 8, torch.ones_like(lo)).to(dtype)
                scale = torch.where(scale > 0, scale, flat)
                zero = (lo + 8 * scale.float()).to(dtype)
                q = torch.round((wg - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp_(0, 15)
                q = q.to(torch.int32).reshape(rows, k)
                packed[s:s + rows] = self._pack(q)
                sz[:, s:s + rows, 0] = scale.T
                sz[:, s:s + rows, 1] = zero.T
                if on_rows is not None:
                    on_rows(s, s + rows)
        self.register_buffer("weight", packed)
        self.register_buffer("scales_and_zeros", sz)

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        if self.layout == "cpu":
            return _aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
        return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.scales_and_zeros.dtype

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """The 4-bit codes (0..15) of rows `ids` [M] -> [M, K] int32."""
        k = self.in_features
        if self.layout == "plain":
            b = self.weight[ids].to(torch.int32)
            return torch.stack([b & 15, b >> 4], dim=-1).reshape(ids.shape[0], k)
        main_rows = self.out_features - self.out_features % _BLOCK_ROWS
        slots = _cpu_nibble_slots(k, self.out_features % _BLOCK_ROWS).to(ids.device)
        in_main = ids < main_rows
        block, within = ids // _BLOCK_ROWS, ids % _BLOCK_ROWS
        main = block[:, None] * (_BLOCK_ROWS * k) + slots[within]
        # Rows of a last partial block sit after the whole blocks, in the tail probe's order.
        tail_row = (ids - main_rows).clamp(min=0) + 2 * _BLOCK_ROWS
        tail = main_rows * k + slots[tail_row.clamp(max=slots.shape[0] - 1)] - 2 * _BLOCK_ROWS * k
        slot = torch.where(in_main[:, None], main, tail)
        byte = self.weight.reshape(-1)[slot >> 1].to(torch.int32)
        return (byte >> ((slot & 1) * 4).to(torch.int32)) & 15

    def dequantize(self) -> torch.Tensor:
        if self.layout == "cpu":
            return super().dequantize()
        n, k, g = self.out_features, self.in_features, self.group_size
        q = torch.stack([self.weight & 15, self.weight >> 4], dim=-1).reshape(n, k // g, g).float()
        sz = self.scales_and_zeros.float()
        w = (q - 8) * sz[..., 0].T[..., None] + sz[..., 1].T[..., None]
        return w.reshape(n, k).to(self.compute_dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        shape = ids.shape
        ids = ids.reshape(-1).to(self.weight.device)
        g = self.group_size
        q = self.codes(ids).float().reshape(ids.shape[0], -1, g)
        sz = self.scales_and_zeros[:, ids].float()  # [K/g, M, 2]
        w = (q - 8) * sz[..., 0].T[..., None] + sz[..., 1].T[..., None]
        return w.reshape(*shape, self.in_features).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if self.layout == "cpu" and self._kernel_ok(x):
            # For every number of rows: unpacking this layout for BLAS costs more than the kernel (prefill
            # of 200 rows: kernel 80 ms, bf16 float matmul 31 ms, unpack + dequantize + matmul 190 ms).
            kx = _kernel_input(x.reshape(-1, self.in_features))
            y = _aten._weight_int4pack_mm_for_cpu(kx, self.weight, self.group_size, self._kernel_scales(kx.dtype))
            return y.to(x.dtype).reshape(*lead, self.out_features)
        return self._fallback(x)

    def _kernel_scales(self, dtype: torch.dtype) -> torch.Tensor:
        """scales_and_zeros in the kernel's input dtype, converted once and kept: a float32 model feeds the
        kernel bf16 (see the module notes), and converting per call cost a third more memory traffic
        for the head (16.8 M values a token in E2B)."""
        sz = self.scales_and_zeros
        if sz.dtype == dtype:
            return sz
        cached = getattr(self, "_scales_cache", None)
        if cached is None or cached[0] is not sz or cached[1].dtype != dtype:
            cached = (sz, sz.to(dtype))
            self._scales_cache = cached
        return cached[1]

    def forward_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        # The CPU packing works in blocks of 64 rows: a prefix of whole blocks is the packing of those rows
        # (the constructor packs in such slices). Other prefixes compute every row and keep n.
        if self.layout == "cpu" and self._kernel_ok(x) and n % _BLOCK_ROWS == 0:
            lead = x.shape[:-1]
            kx = _kernel_input(x.reshape(-1, self.in_features))
            y = _aten._weight_int4pack_mm_for_cpu(kx, self.weight[:n], self.group_size,
                                                  self._kernel_scales(kx.dtype)[:, :n].contiguous())
            return y.to(x.dtype).reshape(*lead, n)
        return super().forward_rows(x, n)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, int4 groups of {self.group_size}, {self.layout} layout, "
                f"scales {self.compute_dtype}")


def linear_rows(module: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """The first n outputs of a bias-free nn.Linear or quantized matrix, through a view of its rows."""
    if isinstance(module, QuantizedWeight):
        return module.forward_rows(x, n)
    return F.linear(x, module.weight[:n])


def linear_cols(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [..., k] times the first k input columns of a bias-free nn.Linear or quantized matrix (a strided
    view of a float weight: BLAS reads it in place)."""
    if isinstance(module, QuantizedWeight):
        return module.forward_cols(x)
    return F.linear(x, module.weight[:, :x.shape[-1]])


def int4_supported(out_features: int, in_features: int, group_size: int = DEFAULT_GROUP_SIZE) -> bool:
    """The CPU int4 kernel's shape rules (also applied elsewhere, so a model quantizes the same everywhere)."""
    return in_features % group_size == 0 and out_features % 16 == 0 and in_features >= group_size


@lru_cache(maxsize=None)
def _cpu_nibble_slots(k: int, tail: int) -> torch.Tensor:
    """Where `_convert_weight_to_int4pack_for_cpu` puts each code: for a probe of 2 * 64 + `tail` rows of
    length `k`, the nibble slot (2 * byte + 1 for the high nibble) of every element, [rows, k] int64.

    Found by packing the base-16 digits of each element's flat index and reading them back. Rows 64..127
    must repeat rows 0..63 one block further on (the layout works in blocks of 64 or 32 rows); rows 128..
    are the layout of a last partial block of `tail` rows."""
    rows = 2 * _BLOCK_ROWS + tail
    n = rows * k
    index = torch.arange(n, dtype=torch.int64)
    found = torch.zeros(n, dtype=torch.int64)
    digit = 0
    while (1 << (4 * digit)) < n:
        plane = ((index >> (4 * digit)) & 15).to(torch.int32).reshape(rows, k)
        packed = _aten._convert_weight_to_int4pack_for_cpu(plane, 1).reshape(-1).to(torch.int64)
        found |= torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1) << (4 * digit)
        digit += 1
    if not torch.equal(found.sort().values, index):
        raise RuntimeError("unexpected int4 CPU packing in this PyTorch build (not a permutation)")
    slots = torch.empty(n, dtype=torch.int64)
    slots[found] = index
    slots = slots.reshape(rows, k)
    if not torch.equal(slots[_BLOCK_ROWS:2 * _BLOCK_ROWS], slots[:_BLOCK_ROWS] + _BLOCK_ROWS * k):
        raise RuntimeError("unexpected int4 CPU packing in this PyTorch build (blocks larger than 64 rows)")
    return slots


def cpu_rows_supported(k: int, n: int) -> bool:
    """Whether rows of a CPU-packed int4 [n, k] matrix can be gathered (the layout probe agrees)."""
    try:
        _cpu_nibble_slots(k, n % _BLOCK_ROWS)
    except RuntimeError:
        return False
    return True


def quantize_matrix(weight: torch.Tensor, mode: str, group_size: int = DEFAULT_GROUP_SIZE,
                    need_rows: bool = False, on_rows: RowsDone | None = None) -> QuantizedWeight | None:
    """The quantized form of a float [out, in] matrix, or None where it stays float (too small, or a shape
    the int4 kernel cannot take). `need_rows`: the matrix is also gathered by rows (the tied embedding);
    in int4 mode on a CPU whose packing cannot be gathered it falls back to int8."""
    out_features, in_features = weight.shape
    if check_mode(mode) == "int4":
        if group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group size {group_size}: expected one of {INT4_GROUP_SIZES}")
        if int4_supported(out_features, in_features, group_size):
            if not (need_rows and weight.device.type == "cpu" and not cpu_rows_supported(in_features, out_features)):
                return Int4Weight(weight, group_size, on_rows=on_rows)
        elif not need_rows:
            return None
    if min(out_features, in_features) < INT8_MIN_FEATURES:
        return None
    return Int8Weight(weight, on_rows=on_rows)


def quantize_linears_(module: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE,
                      skip: tuple[str, ...] = ()) -> None:
    """Replace every bias-free nn.Linear under `module` (except names under `skip`) by its quantized form,
    one at a time: each float weight is released as soon as its replacement exists."""
    check_mode(mode)
    targets = [(name.rpartition(".")[0], name.rpartition(".")[2]) for name, m in module.named_modules()
               if isinstance(m, nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)]
    for parent_name, child in targets:  # names only: holding the modules would keep every float weight alive
        parent = module.get_submodule(parent_name)
        linear = getattr(parent, child)
        if linear.bias is not None:
            continue
        q = quantize_matrix(linear.weight.detach(), mode, group_size)
        if q is not None:
            setattr(parent, child, q)
        del linear


def quantize_text_model_(text_model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE,
                         on_embedding_rows: RowsDone | None = None) -> None:
    """Quantize a `lm.model.TextModel` in place: every linear of the decoder layers and the global ones
    (AltUp projections, per-layer model projection), and the tied embedding/head as one quantized matrix.
    The per-layer embedding table is left alone (it is gathered, never multiplied, and stays on the host).
    Layers already quantized are left as they are, so a loader can quantize layer by layer first."""
    quantize_linears_(text_model, mode, group_size, skip=("embed_tokens", "embed_tokens_per_layer"))
    embed = text_model.embed_tokens
    if isinstance(embed, nn.Embedding):
        q = quantize_matrix(embed.weight.detach(), mode, group_size, need_rows=True, on_rows=on_embedding_rows)
        if q is not None:
            text_model.embed_tokens = q
        del embed


@dataclass
class QuantSummary:
    """What a quantized model holds: counts and bytes of quantized matrices and of float linears kept."""

    quantized: dict[str, int] = field(default_factory=dict)  # kind -> matrices
    quantized_bytes: int = 0
    float_linears: list[str] = field(default_factory=list)
    float_linear_bytes: int = 0


def summarize(module: nn.Module) -> QuantSummary:
    s = QuantSummary()
    for name, m in module.named_modules():
        if isinstance(m, QuantizedWeight):
            kind = "int8" if isinstance(m, Int8Weight) else f"int4/g{m.group_size}"
            s.quantized[kind] = s.quantized.get(kind, 0) + 1
            s.quantized_bytes += sum(b.numel() * b.element_size() for b in m.buffers())
        elif isinstance(m, nn.Linear):
            s.float_linears.append(name)
            s.float_linear_bytes += m.weight.numel() * m.weight.element_size()
    return s
