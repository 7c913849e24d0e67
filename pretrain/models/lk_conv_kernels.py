"""Triton kernels of the large-kernel depthwise convolution (stride 1, padding k//2, odd k).

Direct convolution, fp32 accumulation, any input dtype Triton loads (bf16, fp16, fp32). Every
kernel takes the tensors' strides, so channels-last and NCHW inputs run without copies; channels
are the innermost (vectorized) block, which is where channels-last keeps them contiguous. Offsets
are 32-bit: the caller refuses tensors of 2**31 elements or more.

- ``depthwise_fwd_kernel``: one program per (image row, block of columns, block of channels).
  It visits only the kernel rows whose input row lies inside the map, so the vertical zero
  padding costs nothing (at 7 px with k = 13 that is about half of the nominal taps).
  The input gradient is this kernel run on the output gradient with the kernel flipped.
- ``depthwise_toeplitz_fwd_kernel``: the same convolution for small maps as a product with a
  banded (Toeplitz) matrix per channel, on tensor cores (its docstring); the input gradient again
  with the kernel flipped.
- ``depthwise_wgrad_kernel``: one program per (block of channels, kernel row, slice of the
  batch); for each valid output pixel row it loads the output gradient once and the input as a
  [columns, kernel columns, channels] window, accumulating a [kernel columns, channels] tile.
  The per-slice partial sums (fp32) are added by the caller: deterministic, no atomics.
"""
import triton
import triton.language as tl


@triton.jit
def depthwise_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W,
                         sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # w_ptr: the kernel as a contiguous [K, K, C] tensor (channels innermost, loads coalesce).
    row = tl.program_id(0)
    n = row // H
    h = row % H
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    P: tl.constexpr = K // 2
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    kh_lo = tl.maximum(P - h, 0)
    kh_hi = tl.minimum(H + P - h, K)
    x_img = x_ptr + n * sxn + offs_c[None, :] * sxc
    for kh in range(kh_lo, kh_hi):
        x_row = x_img + (h + kh - P) * sxh
        for kw in tl.static_range(K):
            iw = offs_w + (kw - P)
            m = ((iw >= 0) & (iw < W))[:, None] & mask_c[None, :]
            xv = tl.load(x_row + iw[:, None] * sxw, mask=m, other=0.0)
            wv = tl.load(w_ptr + (kh * K + kw) * C + offs_c, mask=mask_c, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + n * syn + h * syh + offs_w[:, None] * syw + offs_c[None, :] * syc
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(offs_w < W)[:, None] & mask_c[None, :])


@triton.jit
def depthwise_wgrad_kernel(x_ptr, dy_ptr, part_ptr, N, C, H, W, IMAGES_PER_PROGRAM,
                           sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw,
                           K: tl.constexpr, KPAD: tl.constexpr,
                           BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # part_ptr: fp32 [slices, K, K, C]; this program writes its slice's row kh.
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    kh = tl.program_id(1)
    piece = tl.program_id(2)
    mask_c = offs_c < C
    P: tl.constexpr = K // 2
    kw = tl.arange(0, KPAD)
    mask_k = kw < K
    acc = tl.zeros([KPAD, BLOCK_C], dtype=tl.float32)
    n_lo = piece * IMAGES_PER_PROGRAM
    n_hi = tl.minimum(n_lo + IMAGES_PER_PROGRAM, N)
    # Output rows h whose input row h + kh - P lies inside the map.
    h_lo = tl.maximum(P - kh, 0)
    h_hi = tl.minimum(H + P - kh, H)
    for n in range(n_lo, n_hi):
        for h in range(h_lo, h_hi):
            x_row = x_ptr + n * sxn + (h + kh - P) * sxh
            dy_row = dy_ptr + n * sdn + h * sdh
            for w0 in range(0, W, BLOCK_W):
                offs_w = w0 + tl.arange(0, BLOCK_W)
                mask_w = offs_w < W
                g = tl.load(dy_row + offs_w[:, None] * sdw + offs_c[None, :] * sdc,
                            mask=mask_w[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
                iw = offs_w[:, None] + kw[None, :] - P                       # [BLOCK_W, KPAD]
                m_win = (iw >= 0) & (iw < W) & mask_w[:, None] & mask_k[None, :]
                xv = tl.load(x_row + iw[:, :, None] * sxw + offs_c[None, None, :] * sxc,
                             mask=m_win[:, :, None] & mask_c[None, None, :], other=0.0)
                acc += tl.sum(xv.to(tl.float32) * g[:, None, :], axis=0)
    out = part_ptr + ((piece * K + kh) * K + kw[:, None]) * C + offs_c[None, :]
    tl.store(out, acc, mask=mask_k[:, None] & mask_c[None, :])


@triton.jit
def depthwise_toeplitz_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, C, H, W,
                                  sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                                  K: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    """Small maps on tensor cores: per channel c, y_c [N, H*W] = x_c [N, H*W] @ M_c [H*W, H*W], where
    M_c[s_in, s_out] = w[c, h_in - h_out + P, w_in - w_out + P] inside the kernel's support, else 0.
    The banded matrix is gathered from the [K, K, C] kernel tile by tile, never stored; no multiply
    touches the zero padding around the map. Grid: (channels, batch blocks, output-pixel blocks)."""
    c = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_s = tl.program_id(2) * BLOCK_S + tl.arange(0, BLOCK_S)       # output pixels h * W + w
    P: tl.constexpr = K // 2
    HW = H * W
    h_out, w_out = offs_s // W, offs_s % W
    mask_n, mask_s = offs_n < N, offs_s < HW
    acc = tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32)
    for k0 in range(0, HW, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)                           # input pixels
        mask_k = offs_k < HW
        h_in, w_in = offs_k // W, offs_k % W
        xv = tl.load(x_ptr + offs_n[:, None] * sxn + c * sxc + h_in[None, :] * sxh + w_in[None, :] * sxw,
                     mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        kh = h_in[:, None] - h_out[None, :] + P                        # [BLOCK_K, BLOCK_S]
        kw = w_in[:, None] - w_out[None, :] + P
        inside = (kh >= 0) & (kh < K) & (kw >= 0) & (kw < K) & mask_k[:, None] & mask_s[None, :]
        mv = tl.load(w_ptr + (kh * K + kw) * C + c, mask=inside, other=0.0)
        if UPCAST:  # Triton's interpreter computes bf16 tl.dot wrongly; fp32 there
            acc += tl.dot(xv.to(tl.float32), mv.to(tl.float32))
        elif IEEE:  # fp32 inputs: full precision, not TF32
            acc += tl.dot(xv, mv, input_precision='ieee')
        else:
            acc += tl.dot(xv, mv)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    y = y_ptr + offs_n[:, None] * syn + c * syc + h_out[None, :] * syh + w_out[None, :] * syw
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_s[None, :])
