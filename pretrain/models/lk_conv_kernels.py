"""Triton kernels of the large-kernel depthwise convolution (stride 1, padding k//2, odd k).

fp32 accumulation, any input dtype Triton loads (bf16, fp16, fp32). Every
kernel takes the tensors' strides, so channels-last and NCHW inputs run without copies; channels
are the innermost (vectorized) block, which is where channels-last keeps them contiguous. Offsets
are 32-bit: the caller refuses tensors of 2**31 elements or more.

- ``depthwise_fwd_kernel``: one program per (image, block of BLOCK_H output rows, block of
  columns, block of channels). It walks the input rows those output rows read (rows in the zero
  padding are never visited: at 7 px with k = 13 about half of the nominal taps) and, for each
  kernel column, loads the shifted input row once and adds it into all BLOCK_H output rows with
  each row's own tap: a loaded input element feeds up to BLOCK_H multiply-adds (BLOCK_H = 1 is
  the plain direct convolution). The kernel comes as fp32 taps, converted once by the caller
  rather than once per multiply-add; with SPREAD_TAPS every thread loads the taps it uses
  rather than receiving them through shared memory (the autotuner tries both). The input
  gradient is this kernel run on the output gradient with the kernel flipped.
- ``depthwise_toeplitz_fwd_kernel``: the same convolution for small maps as a product with a
  banded (Toeplitz) matrix per channel, on tensor cores, over *planar* copies of the maps made
  once per call (its docstring); the input gradient again with the kernel flipped.
- ``depthwise_toeplitz_wgrad_kernel``: the weight gradient of small maps on tensor cores, on planar
  copies too: per channel and kernel row, a [columns, columns] product of the output gradient's
  rows with the input's rows shifted by the kernel row, whose diagonals are the kernel row's taps
  (its docstring). Rows and columns in the padding are never multiplied.
- ``depthwise_wgrad_kernel``: one program per (block of channels, kernel row, slice of the
  batch); for each valid output pixel row it loads the output gradient once and the input as a
  [columns, kernel columns, channels] window, accumulating a [columns, kernel columns, channels]
  tile that is summed over the columns once, at the end (not once per row: that sum goes through
  shared memory). The per-slice partial sums (fp32) are added by the caller: deterministic, no
  atomics.

What ptxas makes of each kernel for an H100 (registers, spills, instructions per multiply-add in
the hot loop) is printed by ``bench/lk_conv_sass.py``, on any machine.
"""
import triton
import triton.language as tl


@triton.jit
def depthwise_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, H, W,
                         sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
                         SPREAD_TAPS: tl.constexpr):
    # w_ptr: the kernel as contiguous fp32 taps [K, K, C] (channels innermost, loads coalesce).
    # SPREAD_TAPS: each thread loads the taps it multiplies by (more loads, from L1) instead of one
    # load per row and channel handed round through shared memory (a barrier every tap).
    rows = tl.cdiv(H, BLOCK_H)
    n = tl.program_id(0) // rows
    h0 = (tl.program_id(0) % rows) * BLOCK_H
    offs_h = h0 + tl.arange(0, BLOCK_H)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    P: tl.constexpr = K // 2
    acc = tl.zeros([BLOCK_H, BLOCK_W, BLOCK_C], dtype=tl.float32)
    ih_lo = tl.maximum(h0 - P, 0)
    ih_hi = tl.minimum(h0 + BLOCK_H + P, H)
    # Operands are built in the accumulator's three dimensions, size 1 where they broadcast.
    c3 = offs_c[None, None, :]
    mask_c3 = mask_c[None, None, :]
    h3 = offs_h[:, None, None]
    spread = tl.zeros([1, BLOCK_W if SPREAD_TAPS else 1, 1], dtype=tl.int32)
    x_img = x_ptr + n * sxn + c3 * sxc
    for ih in range(ih_lo, ih_hi):
        x_row = x_img + ih * sxh
        kh = ih - h3 + P                                                   # [BLOCK_H, 1, 1]
        w_row = w_ptr + kh * K * C + c3 + spread
        mask_kh = (kh >= 0) & (kh < K) & mask_c3 & (spread == 0)
        for kw in range(K):
            iw = offs_w[None, :, None] + (kw - P)                         # [1, BLOCK_W, 1]
            xv = tl.load(x_row + iw * sxw, mask=(iw >= 0) & (iw < W) & mask_c3, other=0.0)
            wv = tl.load(w_row + kw * C, mask=mask_kh, other=0.0)
            acc += xv.to(tl.float32) * wv
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, None, :]
    y = y_ptr + n * syn + offs_h[:, None, None] * syh + offs_w[None, :, None] * syw + offs_c[None, None, :] * syc
    mask_y = (offs_h < H)[:, None, None] & ((offs_w < W)[:, None] & mask_c[None, :])[None, :, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_y)


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
    acc = tl.zeros([BLOCK_W, KPAD, BLOCK_C], dtype=tl.float32)
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
                acc += xv.to(tl.float32) * g[:, None, :]
    out = part_ptr + ((piece * K + kh) * K + kw[:, None]) * C + offs_c[None, :]
    tl.store(out, tl.sum(acc, axis=0), mask=mask_k[:, None] & mask_c[None, :])


@triton.jit
def tensor_core_product(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """a @ b in fp32. UPCAST: Triton's interpreter computes bf16 tl.dot wrongly, so fp32 there;
    IEEE: fp32 inputs at full precision, not TF32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif IEEE:
        return tl.dot(a, b, input_precision='ieee')
    else:
        return tl.dot(a, b)


@triton.jit
def depthwise_toeplitz_fwd_kernel(x_ptr, band_ptr, b_ptr, y_ptr, N, H, W, sxn, sxc, syn, syc, syh, syw,
                                  K: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                                  WPAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
                                  BLOCK_K: tl.constexpr):
    """Small maps on tensor cores: per channel c, y_c [N, H*WPAD] = x_c [N, H*WPAD] @ M_c, where
    M_c[(h_in, w_in), (h_out, w_out)] = band[c, h_in - h_out + P, w_in, w_out] for a tap row inside
    the kernel, else 0; ``band[c, kh]`` is the [WPAD, WPAD] Toeplitz block of kernel row kh (zero
    outside the kernel's columns and past the map's width), built once per call by the caller.

    x is *planar*: [N, C, H, WPAD] with rows WPAD (a power of two) wide and zeros past the map's
    width (the caller transposes a channels-last map once per call, cheap at these sizes), so the
    hot loop's loads of one channel are whole, aligned rows (vector-wide) instead of one element
    per 32-byte sector, and a band tile is WPAD contiguous taps per row: no load is masked within a
    row. y is written once per program, after the loop, in its own layout (any strides).
    Grid: (channels, batch blocks, output-pixel blocks of BLOCK_S // WPAD rows). Each reduction
    step takes BLOCK_K // WPAD whole input rows; only input rows within the kernel's reach of the
    block's output rows are visited."""
    c = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    s0 = tl.program_id(2) * BLOCK_S
    offs_s = s0 + tl.arange(0, BLOCK_S)                               # output pixels h * WPAD + w
    P: tl.constexpr = K // 2
    ROWS: tl.constexpr = BLOCK_K // WPAD
    TILE: tl.constexpr = WPAD * WPAD
    HS = H * WPAD
    h_out, w_out = offs_s // WPAD, offs_s % WPAD
    mask_n = offs_n < N
    r = tl.arange(0, BLOCK_K) // WPAD                                 # the step's input row, 0..ROWS-1
    w_in = tl.arange(0, BLOCK_K) % WPAD
    kh0 = r[:, None] - h_out[None, :] + P                             # tap row at input row 0
    band_at = band_ptr + c * (K * TILE) + kh0 * TILE + w_in[:, None] * WPAD + w_out[None, :]
    x_at = x_ptr + offs_n[:, None] * sxn + c * sxc + tl.arange(0, BLOCK_K)[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_S], dtype=tl.float32)
    last_out_row = (tl.minimum(s0 + BLOCK_S, HS) - 1) // WPAD
    row_lo = tl.maximum(s0 // WPAD - P, 0)
    row_hi = tl.minimum(last_out_row + P + 1, H)
    for h0 in range(row_lo, row_hi, ROWS):
        h_ok = (r + h0) < H
        xv = tl.load(x_at + h0 * WPAD, mask=mask_n[:, None] & h_ok[None, :], other=0.0)
        kh = kh0 + h0
        mv = tl.load(band_at + h0 * TILE, mask=(kh >= 0) & (kh < K) & h_ok[:, None], other=0.0)
        acc += tensor_core_product(xv, mv, UPCAST, IEEE)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c).to(tl.float32)
    y = y_ptr + offs_n[:, None] * syn + c * syc + h_out[None, :] * syh + w_out[None, :] * syw
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_n[:, None] & ((h_out < H) & (w_out < W))[None, :])


@triton.jit
def depthwise_toeplitz_wgrad_kernel(x_ptr, dy_ptr, part_ptr, N, C, H, sxn, sxc, sdn, sdc,
                                    K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                                    WPAD: tl.constexpr, COLS: tl.constexpr, BLOCK_R: tl.constexpr):
    """The weight gradient of small maps on tensor cores, on planar x and dy (as the forward: rows
    WPAD wide, zeros past the map's width). Program (c, kh): over every image n and every output
    row h whose input row h + kh - P lies inside the map (the vertical padding is never visited),
    G [COLS, COLS] += dy_c[rows, w_out]^T @ x_c[rows shifted by kh, w_in] (COLS: WPAD, at least 16,
    the smallest tensor-core product); then dW[c, kh, kw] = the sum of G's diagonal
    w_in - w_out = kw - P, written to part_ptr (fp32 [K, K, C]). Columns past the map's width are
    zero in both operands, so no product touches the horizontal padding either."""
    c = tl.program_id(0)
    kh = tl.program_id(1)
    P: tl.constexpr = K // 2
    h_lo = tl.maximum(P - kh, 0)
    rows_per_image = tl.minimum(H + P - kh, H) - h_lo
    rows = N * rows_per_image
    cols = tl.arange(0, COLS)
    in_row = cols < WPAD                                            # all true unless COLS > WPAD
    acc = tl.zeros([COLS, COLS], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        n = r // rows_per_image
        h = h_lo + r % rows_per_image
        mask_r = r < rows
        gT = tl.load(dy_ptr + c * sdc + n[None, :] * sdn + h[None, :] * WPAD + cols[:, None],
                     mask=in_row[:, None] & mask_r[None, :], other=0.0)              # [w_out, rows]
        xv = tl.load(x_ptr + c * sxc + n[:, None] * sxn + (h + kh - P)[:, None] * WPAD + cols[None, :],
                     mask=mask_r[:, None] & in_row[None, :], other=0.0)              # [rows, w_in]
        acc += tensor_core_product(gT, xv, UPCAST, IEEE)
    shift = cols[None, :] - cols[:, None] + P                                       # kw of G[w_out, w_in]
    for kw in range(K):
        tl.store(part_ptr + (kh * K + kw) * C + c, tl.sum(tl.sum(tl.where(shift == kw, acc, 0.0), axis=1), axis=0))
