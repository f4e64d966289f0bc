"""Mamba-1's selective scan in Triton: forward and backward, the signature of `selective_scan_ref`.

    u, delta, z: (b, d, l)    A: (d, n)    B, C: (b, n, l) or (b, 1, n, l)    D, delta_bias: (d,)

Any strides: the kernels read each tensor through its strides, so the (b, l, d) projections of the mixer,
seen as (b, d, l) through a transpose, go in without a copy, and y comes back in u's layout.

How it runs. One program owns `BD` channels of one batch row (one warp, one channel per lane, all n states of
that channel in the lane's registers, in float32 whatever the inputs are) and walks the sequence step by step,
loading step t + 1's inputs while step t computes. A step is one exp2 per state element: the floor of this
kernel is the special-function units, not memory (at DiM-H/2's 1024 px shape the exps take ~53 us at batch 1
on an H200, the bytes ~26 us). When batch x channel blocks is too small to fill the GPU (batch 1 and 8 at
DiM-H/2's width), the forward also splits the sequence into parts walked in parallel, at the price of a
second pass of exps (see _scan_fwd_kernel). Tiles are (n, d): d is the contiguous axis of every load and
store, and n stays within a lane, so the per-step sums over n need no shuffles. Measurements, sweeps and the
version history: results/scan-bench/.

When a backward will follow, the forward saves the state entering every CHUNK (16) steps, (b, l / CHUNK, n, d);
otherwise it saves nothing. The backward walks the chunks from last to first: it recomputes one chunk's
states from its saved entry into a small float32 scratch (small enough to stay in L2), then runs the adjoint
recurrence lambda_t = C_t g_t + a_{t+1} lambda_{t+1} backwards over it and forms every gradient from lambda_t,
h_t and h_{t-1}. Gradients that sum over channels (B, C) are reduce-scattered across the block's lanes at each
step (_sum_over_d), written per block of channels and summed afterwards; those that sum over batch and time
(A, D, delta_bias) are written per batch row: the result is deterministic, with no atomics.

Triton's interpreter (TRITON_INTERPRET=1, set before this module is imported) runs the same kernels on CPU
tensors; the tests use it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


# -- pieces shared by the two kernels -------------------------------------------------------------------------
@triton.jit
def _exp2(x, FAST: tl.constexpr):
    """2^x; FAST: one ex2.approx.ftz (a single special-function op; tl.exp2 adds denormal handling)."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)), and x itself above 20 (torch's threshold); log1p by the (1 + e) - 1 correction."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p_e)


@triton.jit
def _step_dt(delta, bias, valid, SOFTPLUS: tl.constexpr):
    """dt of one step (BD,) from raw delta + bias; 0 past the end of the sequence, where a step is the identity."""
    x = delta + bias
    if SOFTPLUS:
        dt = _softplus(x)
    else:
        dt = x
    return tl.where(valid, dt, 0.0)


@triton.jit
def _load_step(t, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
               offs_d_u, offs_d_dl, offs_d_z, offs_n_B, offs_n_C, mask_d, mask_n, HAS_Z: tl.constexpr):
    """u, delta, B, C, z of step t as float32 (zeros past the end)."""
    ok = t < L
    u = tl.load(b_u + t * s_ul + offs_d_u, mask=mask_d & ok, other=0.0).to(tl.float32)
    dl = tl.load(b_dl + t * s_dl + offs_d_dl, mask=mask_d & ok, other=0.0).to(tl.float32)
    Bt = tl.load(b_B + t * s_Bl + offs_n_B, mask=mask_n & ok, other=0.0).to(tl.float32)
    Ct = tl.load(b_C + t * s_Cl + offs_n_C, mask=mask_n & ok, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(b_z + t * s_zl + offs_d_z, mask=mask_d & ok, other=0.0).to(tl.float32)
    else:
        z = u
    return u, dl, Bt, Ct, z


@triton.jit
def _channel_tiles(pid_d, A_ptr, D_ptr, bias_ptr, DIM, NST, BD: tl.constexpr, NP: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    """A program's channels: offsets and masks, the (n, d) tile offsets, A log2 e (NP, BD), D and bias (BD,)."""
    offs_d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    offs_n = tl.arange(0, NP)  # (NP,)
    mask_d = offs_d < DIM
    if EVEN_N:  # n is a power of two: no mask along n
        mask_n = tl.full([NP], 1, tl.int1)
    else:
        mask_n = offs_n < NST
    mask_dn = mask_n[:, None] & mask_d[None, :]
    dn_offs = offs_n[:, None] * DIM + offs_d[None, :]  # (NP, BD) tiles of (n, d) memory
    # exp(dt A) = exp2(dt * A log2 e): one multiply and one ex2 per element
    A2 = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return offs_d, offs_n, mask_d, mask_n, mask_dn, dn_offs, A2, Dv, bias


# -- forward ------------------------------------------------------------------------------------------------
# Grid (channel blocks, batch, sequence parts). With one part, each program walks the whole sequence. With
# several (small batch * d), a first launch (STATE_ONLY) walks each part from a zero state and keeps only its
# end state and its sum of dt; the second starts each part from its true entering state, the parts before it
# folded in with one decay exp(A * sum dt) each, and writes y. That costs the exps twice but gives the
# grid enough programs to hide each step's memory latency, which is what bounds a walk at batch 1.
# DIM unspecialized: were its divisibility by 16 known, tiles would be vectorized 4-wide along d and n split
# across lanes (shuffles for every sum over n); as it is, a lane holds one channel's whole state.
@triton.jit(do_not_specialize=["DIM"])
def _scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    y_ptr, last_ptr, ck_ptr, end_ptr, dtsum_ptr,
    L, DIM, NST, N_CK, CK, CPP, N_PART,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_zb, s_zd, s_zl, s_yb, s_yd, s_yl,
    BD: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STATE_ONLY: tl.constexpr, FAST_EXP: tl.constexpr, EVEN_N: tl.constexpr, SAVE: tl.constexpr,
    DEPTH: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_p = tl.program_id(2)  # sequence part: saved-state chunks [pid_p * CPP, (pid_p + 1) * CPP)
    offs_d, offs_n, mask_d, mask_n, mask_dn, dn_offs, A2, Dv, bias = _channel_tiles(
        pid_d, A_ptr, D_ptr, bias_ptr, DIM, NST, BD, NP, HAS_D, HAS_BIAS, EVEN_N)

    b_u, b_dl, b_z = u_ptr + pid_b * s_ub, dl_ptr + pid_b * s_db, z_ptr + pid_b * s_zb
    b_B, b_C, b_y = B_ptr + pid_b * s_Bb, C_ptr + pid_b * s_Cb, y_ptr + pid_b * s_yb
    o_u, o_dl, o_z, o_y = offs_d * s_ud, offs_d * s_dd, offs_d * s_zd, offs_d * s_yd
    o_B, o_C = offs_n * s_Bn, offs_n * s_Cn
    ck_base = ck_ptr + pid_b * N_CK * DIM * NST + dn_offs
    part_dn = end_ptr + pid_b * N_PART * DIM * NST + dn_offs  # (b, parts, n, d)
    part_d = dtsum_ptr + pid_b * N_PART * DIM + offs_d  # (b, parts, d)

    h = tl.zeros([NP, BD], dtype=tl.float32)
    if not STATE_ONLY:
        for p in range(pid_p):  # the parts before this one: h <- exp(A sum dt_p) h + end_p
            h = _exp2(tl.load(part_d + p * DIM, mask=mask_d, other=0.0)[None, :] * A2, FAST_EXP) * h \
                + tl.load(part_dn + p * DIM * NST, mask=mask_dn, other=0.0)
    dt_total = tl.zeros([BD], dtype=tl.float32)
    c_lo = pid_p * CPP
    c_hi = tl.minimum(c_lo + CPP, N_CK)
    # DEPTH steps' inputs in flight: step t computes while steps t + 1 .. t + DEPTH load. A part's last steps
    # load up to DEPTH steps of the next part, unused; steps past L are masked and read nothing.
    t0 = c_lo * CK
    nxt = _load_step(t0, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                     o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z and not STATE_ONLY)
    nxt2 = nxt
    nxt3 = nxt
    if DEPTH >= 2:
        nxt2 = _load_step(t0 + 1, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                          o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z and not STATE_ONLY)
    if DEPTH >= 3:
        nxt3 = _load_step(t0 + 2, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                          o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z and not STATE_ONLY)
    for c in range(c_lo, c_hi):
        if SAVE and not STATE_ONLY:
            tl.store(ck_base + c * DIM * NST, h, mask=mask_dn)  # the state entering chunk c
        for i in range(CK):
            t = c * CK + i
            u, dl, Bt, Ct, z = nxt
            ahead = _load_step(t + DEPTH, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                               o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z and not STATE_ONLY)
            if DEPTH >= 3:  # shift the queue of loaded steps by one
                nxt = nxt2
                nxt2 = nxt3
                nxt3 = ahead
            elif DEPTH == 2:
                nxt = nxt2
                nxt2 = ahead
            else:
                nxt = ahead
            dt = _step_dt(dl, bias, t < L, SOFTPLUS)
            a = _exp2(dt[None, :] * A2, FAST_EXP)
            h = a * h + (dt * u)[None, :] * Bt[:, None]
            if STATE_ONLY:
                dt_total += dt
            else:
                y = tl.sum(h * Ct[:, None], axis=0)  # (BD,): n is within a thread
                if HAS_D:
                    y += Dv * u
                if HAS_Z:
                    y = y * (z * tl.sigmoid(z))
                tl.store(b_y + t * s_yl + o_y, y.to(y_ptr.dtype.element_ty), mask=mask_d & (t < L))
    if STATE_ONLY:
        tl.store(part_dn + pid_p * DIM * NST, h, mask=mask_dn)
        tl.store(part_d + pid_p * DIM, dt_total, mask=mask_d)
    elif pid_p == N_PART - 1:
        tl.store(last_ptr + pid_b * DIM * NST + dn_offs, h, mask=mask_dn)


# -- backward -----------------------------------------------------------------------------------------------
@triton.jit
def _halve(v, lane, BIT: tl.constexpr):
    """One level of a reduce-scatter over d: (2 h, BD) -> (h, BD). The channels whose index has bit BIT set keep
    the upper half of n and send the lower half to the channel at index ^ (1 << BIT), which keeps the lower."""
    NH: tl.constexpr = v.shape[0] // 2
    BD: tl.constexpr = v.shape[1]
    lo, hi = tl.split(tl.permute(tl.reshape(v, (2, NH, BD)), (1, 2, 0)))  # n in [0, NH), [NH, 2 NH)
    up = ((lane >> BIT) & 1)[None, :] == 1
    partner = tl.broadcast_to((lane ^ (1 << BIT))[None, :], (NH, BD))
    return tl.where(up, hi, lo) + tl.gather(tl.where(up, lo, hi), partner, axis=1)


@triton.jit
def _sum_over_d(v, lane, LOG_N: tl.constexpr, LOG_BD: tl.constexpr):
    """(NP, BD) -> (BD,): the sum over d of v, reduce-scattered. Entry i holds n = i >> (LOG_BD - LOG_N), and
    every entry of one n holds the same sum. With d across a warp's lanes (one channel per lane), the gathers
    are lane shuffles: 2 NP - 1 + (LOG_BD - LOG_N) of them, where a sum per n (tl.sum) takes NP LOG_BD."""
    if LOG_N >= 1:
        v = _halve(v, lane, LOG_BD - 1)
    if LOG_N >= 2:
        v = _halve(v, lane, LOG_BD - 2)
    if LOG_N >= 3:
        v = _halve(v, lane, LOG_BD - 3)
    if LOG_N >= 4:
        v = _halve(v, lane, LOG_BD - 4)
    if LOG_N >= 5:
        v = _halve(v, lane, LOG_BD - 5)
    s = tl.reshape(v, (v.shape[1],))
    for bit in tl.static_range(LOG_BD - LOG_N):  # the channels that still hold the same n
        s += tl.gather(s, lane ^ (1 << bit), axis=0)
    return s


@triton.jit(do_not_specialize=["DIM", "SROW"])
def _scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ck_ptr, gy_ptr, glast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, scr_ptr,
    L, DIM, NST, N_CK, CK, BATCH, SROW,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_dub, s_dud, s_dul, s_ddb, s_ddd, s_ddl, s_dzb, s_dzd, s_dzl,
    BD: tl.constexpr, NP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GLAST: tl.constexpr, FAST_EXP: tl.constexpr, EVEN_N: tl.constexpr, PREFETCH: tl.constexpr,
    LOG_N: tl.constexpr, LOG_BD: tl.constexpr, STORE_DECAY: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d, offs_n, mask_d, mask_n, mask_dn, dn_offs, A2, Dv, bias = _channel_tiles(
        pid_d, A_ptr, D_ptr, bias_ptr, DIM, NST, BD, NP, HAS_D, HAS_BIAS, EVEN_N)

    b_u, b_dl, b_z = u_ptr + pid_b * s_ub, dl_ptr + pid_b * s_db, z_ptr + pid_b * s_zb
    b_B, b_C, b_g = B_ptr + pid_b * s_Bb, C_ptr + pid_b * s_Cb, gy_ptr + pid_b * s_gb
    o_u, o_dl, o_z, o_g = offs_d * s_ud, offs_d * s_dd, offs_d * s_zd, offs_d * s_gd
    o_B, o_C = offs_n * s_Bn, offs_n * s_Cn
    b_du, b_ddl, b_dz = du_ptr + pid_b * s_dub, ddl_ptr + pid_b * s_ddb, dz_ptr + pid_b * s_dzb
    o_du, o_ddl, o_dz = offs_d * s_dud, offs_d * s_ddd, offs_d * s_dzd
    # per block of channels: dB, dC as (n_blocks, b, l, n) partial sums over this block's channels
    b_dBC = (pid_d * BATCH + pid_b) * L * NST
    ck_base = ck_ptr + pid_b * N_CK * DIM * NST + dn_offs
    # this program's scratch: slot 0 the state entering the chunk, slot i + 1 the state after its step i; with
    # STORE_DECAY, slot CK + 1 + i holds step i's decay exp(dt A), so the adjoint reads it instead of an exp
    SLOTS = CK + 1
    if STORE_DECAY:
        SLOTS = 2 * CK + 1
    scr = scr_ptr + (pid_b * tl.num_programs(0) + pid_d) * SLOTS * BD * NP \
        + offs_n[:, None] * SROW + tl.arange(0, BD)[None, :]  # SROW = BD, unspecialized: no vectors along d

    lane = tl.arange(0, BD)  # a channel's index within the block
    n_of_lane = lane >> (LOG_BD - LOG_N)  # which n the reduce-scatter leaves in it (LOG_N > 0)
    first_of_n = ((lane & ((1 << (LOG_BD - LOG_N)) - 1)) == 0) & (n_of_lane < NST)  # one store per n
    dA_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    dbias_acc = tl.zeros([BD], dtype=tl.float32)
    if HAS_GLAST:  # a_{t+1} lambda_{t+1} entering the last step: the last state's own gradient
        carry = tl.load(glast_ptr + pid_b * DIM * NST + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([NP, BD], dtype=tl.float32)

    for cc in range(N_CK):
        c = N_CK - 1 - cc
        # 1. this chunk's states again, from its saved entry state (inputs of step t + 1 load during step t)
        h = tl.load(ck_base + c * DIM * NST, mask=mask_dn, other=0.0)
        tl.store(scr, h)
        t0 = c * CK
        nu = tl.load(b_u + t0 * s_ul + o_u, mask=mask_d & (t0 < L), other=0.0)
        ndl = tl.load(b_dl + t0 * s_dl + o_dl, mask=mask_d & (t0 < L), other=0.0)
        nB = tl.load(b_B + t0 * s_Bl + o_B, mask=mask_n & (t0 < L), other=0.0)
        for i in range(CK):
            t = t0 + i
            u, dl, Bt = nu.to(tl.float32), ndl.to(tl.float32), nB.to(tl.float32)
            ok1 = (t + 1 < L) & (i + 1 < CK)
            nu = tl.load(b_u + (t + 1) * s_ul + o_u, mask=mask_d & ok1, other=0.0)
            ndl = tl.load(b_dl + (t + 1) * s_dl + o_dl, mask=mask_d & ok1, other=0.0)
            nB = tl.load(b_B + (t + 1) * s_Bl + o_B, mask=mask_n & ok1, other=0.0)
            dt = _step_dt(dl, bias, t < L, SOFTPLUS)
            a = _exp2(dt[None, :] * A2, FAST_EXP)
            h = a * h + (dt * u)[None, :] * Bt[:, None]
            tl.store(scr + (i + 1) * BD * NP, h)
            if STORE_DECAY:
                tl.store(scr + (CK + 1 + i) * BD * NP, a)
        tl.debug_barrier()  # the scratch is read back below, possibly by other threads of the program
        # 2. the adjoint, backwards over the chunk; h_t of a step is h_prev of the step after it
        t_last = t0 + CK - 1
        h_t = tl.load(scr + CK * BD * NP)
        h_prev_n = tl.load(scr + (CK - 1) * BD * NP)
        nxt = _load_step(t_last, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                         o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z)
        ng = tl.load(b_g + t_last * s_gl + o_g, mask=mask_d & (t_last < L), other=0.0)
        a_n = h_prev_n
        if STORE_DECAY:
            a_n = tl.load(scr + (2 * CK) * BD * NP)  # the last step's decay
        for ii in range(CK):
            i = CK - 1 - ii
            t = t0 + i
            ok = t < L
            mt = mask_d & ok
            if PREFETCH:  # this step's inputs came in during the last one; load the next step's now
                u, dl, Bt, Ct, z = nxt
                g = ng.to(tl.float32)
                h_prev = h_prev_n
                ok1 = (i > 0) & (t - 1 < L)
                nxt = _load_step(tl.where(ok1, t - 1, L), L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl,
                                 s_zl, o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z)
                ng = tl.load(b_g + (t - 1) * s_gl + o_g, mask=mask_d & ok1, other=0.0)
                h_prev_n = tl.load(scr + tl.maximum(i - 1, 0) * BD * NP)  # slot i - 1 (at i = 0: unused)
                if STORE_DECAY:
                    a = a_n
                    a_n = tl.load(scr + (CK + tl.maximum(i, 1)) * BD * NP)  # step i - 1's decay
            else:  # fewer registers live across steps
                u, dl, Bt, Ct, z = _load_step(t, L, b_u, b_dl, b_B, b_C, b_z, s_ul, s_dl, s_Bl, s_Cl, s_zl,
                                              o_u, o_dl, o_z, o_B, o_C, mask_d, mask_n, HAS_Z)
                g = tl.load(b_g + t * s_gl + o_g, mask=mt, other=0.0).to(tl.float32)
                h_prev = tl.load(scr + i * BD * NP)
                if STORE_DECAY:
                    a = tl.load(scr + (CK + 1 + i) * BD * NP)
            x = dl + bias
            dt = _step_dt(dl, bias, ok, SOFTPLUS)
            if not STORE_DECAY:
                a = _exp2(dt[None, :] * A2, FAST_EXP)
            if HAS_Z:  # y = y_pre * silu(z)
                y_pre = tl.sum(h_t * Ct[:, None], axis=0)
                if HAS_D:
                    y_pre += Dv * u
                sz = tl.sigmoid(z)
                tl.store(b_dz + t * s_dzl + o_dz, (g * y_pre * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
                         mask=mt)
                g = g * (z * sz)
            lam = g[None, :] * Ct[:, None] + carry  # dLoss/dh_t, (NP, BD)
            dtu = dt * u
            g_dtu = tl.sum(lam * Bt[:, None], axis=0)  # dLoss/d(dt u) per channel
            q = lam * a * h_prev  # dLoss/d(dt A)
            dA_acc += q * dt[None, :]
            g_dt = tl.sum(q * A2, axis=0) * 0.6931471805599453 + g_dtu * u  # sum q A = ln 2 sum q A2
            g_u = g_dtu * dt
            if HAS_D:
                g_u += Dv * g
                dD_acc += g * u
            if SOFTPLUS:
                g_dt = tl.where(x > 20.0, g_dt, g_dt * tl.sigmoid(x))
            g_dt = tl.where(ok, g_dt, 0.0)
            dbias_acc += g_dt
            tl.store(b_du + t * s_dul + o_du, g_u.to(du_ptr.dtype.element_ty), mask=mt)
            tl.store(b_ddl + t * s_ddl + o_ddl, g_dt.to(ddl_ptr.dtype.element_ty), mask=mt)
            if LOG_N > 0:  # dB_t, dC_t over this block's channels, reduce-scattered: n_of_lane's sum in each lane
                dB_t = _sum_over_d(lam * dtu[None, :], lane, LOG_N, LOG_BD)
                dC_t = _sum_over_d(h_t * g[None, :], lane, LOG_N, LOG_BD)
                tl.store(dB_ptr + b_dBC + t * NST + n_of_lane, dB_t, mask=first_of_n & ok)
                tl.store(dC_ptr + b_dBC + t * NST + n_of_lane, dC_t, mask=first_of_n & ok)
            else:  # n larger than the block: a sum per n
                dB_t = tl.sum(lam * dtu[None, :], axis=1)  # (NP,)
                dC_t = tl.sum(h_t * g[None, :], axis=1)
                tl.store(dB_ptr + b_dBC + t * NST + offs_n, dB_t, mask=mask_n & ok)
                tl.store(dC_ptr + b_dBC + t * NST + offs_n, dC_t, mask=mask_n & ok)
            carry = a * lam
            h_t = h_prev
        tl.debug_barrier()  # before the next chunk overwrites the scratch
    tl.store(dA_ptr + pid_b * DIM * NST + dn_offs, dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * DIM + offs_d, dbias_acc, mask=mask_d)


# -- launchers ----------------------------------------------------------------------------------------------
# Steps between the states the forward saves when a backward will follow. The backward's scratch holds one
# chunk's states, (CHUNK + 1) * BD * n floats per program: at 16 it stays in L2 for every program resident
# at once, where 64 spilled to memory (DiM-S/2's training shape: fwd + bwd 3.39 against 3.58 ms, H200). 8 is
# 6% faster again (3.23 ms) but doubles the saved states, to 4x the bf16 inputs (dim_s_2 training: +2.7%
# images/s for +19% peak memory): DIMSTUDY_SCAN_CHUNK=8 for those who have the memory.
def _env_int(name: str) -> int | None:
    """A tuning override from the environment: DIMSTUDY_SCAN_<name> as an int, None when unset or empty."""
    value = os.environ.get(f"DIMSTUDY_SCAN_{name}")
    return int(value) if value else None


def _env_flag(name: str, default: bool) -> bool:
    """A tuning switch from the environment: DIMSTUDY_SCAN_<name> = 1 (on) or 0 (off); `default` when unset."""
    return os.environ.get(f"DIMSTUDY_SCAN_{name}", "1" if default else "0") == "1"


CHUNK = _env_int("CHUNK") or 16
# Without a backward nothing is saved, and chunks only set the granularity of the forward's sequence parts:
# 64, where 16 and 32 were up to 8% slower at DiM-H/2's 1024 px shapes (results/scan-bench/).
WALK_CHUNK = 64


def _chunking(length: int, chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk length): about `chunk` steps each, evened out so the last is not mostly padding."""
    n_ck = triton.cdiv(length, chunk)
    return n_ck, triton.cdiv(length, n_ck)


BLOCK_OVERRIDE: tuple[int, int] | None = None  # (BD, warps) for every launch; for tuning sweeps
BWD_PREFETCH = _env_flag("BWD_PREFETCH", True)  # load step t - 1 during step t
SCATTER_SUMS = _env_flag("SCATTER", True)  # dB, dC by reduce-scatter (see _sum_over_d)
# The backward's recompute keeps each step's decay exp(dt A) beside its state, and the adjoint reads it back
# instead of computing it again: half the backward's exps, for twice the scratch. Off: slower at DiM-S/2's
# training shape (4.09 ms at chunk 8, 4.71 at 16, against 3.39 without; results/scan-bench/, version 7).
STORE_DECAY = _env_flag("STORE_DECAY", False)
# Steps whose inputs the forward has in flight while one computes (1-3; each costs ~35 registers a lane).
# None: _fwd_depth decides; DIMSTUDY_SCAN_FWD_DEPTH fixes it for tuning runs.
FWD_DEPTH: int | None = _env_int("FWD_DEPTH")


# The most registers a lane may hold (ptx .maxnreg), per kernel; None leaves it to the compiler, which gives the
# backward 255 a lane, so 8 one-warp programs a multiprocessor. A cap trades spills for resident warps; for
# tuning runs (DIMSTUDY_SCAN_FWD_MAXNREG / _BWD_MAXNREG, experiments/bench_scan.py --maxnreg). Measured: the
# backward capped at 128 / 168 is 50% / 26% slower; the forward at 128 is 5% faster at batch 1 and 8% slower
# at batch 8 (results/scan-bench/, version 7), so neither is capped.
FWD_MAXNREG: int | None = _env_int("FWD_MAXNREG")
BWD_MAXNREG: int | None = _env_int("BWD_MAXNREG")


def _register_cap(cap: int | None) -> dict:
    """Launch options for a register cap (none when uncapped; the interpreter ignores them)."""
    return {"maxnreg": cap} if cap else {}


def _fwd_depth(batch: int, dim: int, bd: int, device: torch.device) -> int:
    """3 steps in flight when batch x channel blocks is smaller than the GPU (DiM-H/2 at batch 1: few
    programs per multiprocessor, each step waiting on its loads), else 1 (more warps hide the latency, and the
    extra registers cost occupancy). H200, results/scan-bench/ v6: batch 1 at 1024 px 0.347 -> 0.303 ms with
    3, batch 8 1.736 -> 1.809 ms and the training forward 0.456 -> 0.478 ms."""
    if FWD_DEPTH is not None:
        return FWD_DEPTH
    if device.type != "cuda":
        return 1
    programs, sms = _programs_and_sms(batch, dim, bd, device)
    return 3 if programs < sms else 1


def _programs_and_sms(batch: int, dim: int, bd: int, device: torch.device) -> tuple[int, int]:
    """(programs of a channel-block grid, one per batch row and BD channels; multiprocessors of the GPU)."""
    return batch * triton.cdiv(dim, bd), torch.cuda.get_device_properties(device).multi_processor_count


def _block_config(batch: int, dim: int, device: torch.device, backward: bool = False) -> tuple[int, int]:
    """(BD channels per program, warps per program): 32 channels, one warp, one channel's whole state per
    lane, for both kernels; the best of the sweeps in results/scan-bench/ (H200) at DiM's shapes."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE
    if device.type != "cuda":
        return min(16, triton.next_power_of_2(dim)), 1
    env = os.environ.get("DIMSTUDY_SCAN_BLOCK_BWD" if backward else "DIMSTUDY_SCAN_BLOCK_FWD")
    if env:  # "BD,warps", for tuning runs
        bd, warps = (int(v) for v in env.split(","))
        return bd, warps
    return 32, 1


def _fast_exp(x: torch.Tensor) -> bool:
    """Inline PTX for exp2 on CUDA; the interpreter (CPU tensors) runs tl.exp2."""
    return x.device.type == "cuda" and FAST_EXP


FAST_EXP = True


def _padded_n(n: int) -> int:
    """The state tile's n: a power of two (tl.arange), at least 2."""
    return max(2, triton.next_power_of_2(n))


def _strides(*tensors):
    return [s for x in tensors for s in x.stride()]


def _check(u, delta, A, B, C, D, z, delta_bias):
    b, d, length = u.shape
    if delta.shape != u.shape or (z is not None and z.shape != u.shape):
        raise ValueError(f"u, delta and z must have one shape (b, d, l); got {tuple(u.shape)}, "
                         f"{tuple(delta.shape)}, {None if z is None else tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != d or A.is_complex():
        raise ValueError(f"A must be real, (d, n) = ({d}, n); got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    for name, X in (("B", B), ("C", C)):
        if X.shape != (b, n, length):
            raise ValueError(f"{name} must be input-dependent, (b, n, l) = {(b, n, length)}; got {tuple(X.shape)}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (d,):
            raise ValueError(f"{name} must be (d,) = ({d},); got {tuple(v.shape)}")


def _parts(batch: int, dim: int, bd: int, n_ck: int, device: torch.device) -> int:
    """How many sequence parts the forward walks in parallel. One when batch x channel blocks already gives
    every multiprocessor eight programs; else about PARTS_TARGET programs per multiprocessor, at most 64
    parts. The sweeps (results/scan-bench/, H200) put the best at 64 parts for DiM-H/2 at 1024 px, batch 1
    (96 channel blocks) and 32 at batch 8: the second pass's exps cost less than idle units."""
    if PARTS_OVERRIDE is not None:
        return max(1, min(PARTS_OVERRIDE, n_ck))
    if device.type != "cuda":
        return 1
    programs, sms = _programs_and_sms(batch, dim, bd, device)
    if programs >= 8 * sms:
        return 1
    return max(1, min(n_ck, 64, triton.cdiv(PARTS_TARGET * sms, programs)))


PARTS_TARGET = 192
PARTS_OVERRIDE: int | None = None


def scan_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk=0):
    """Launch the forward: y (u's dtype and layout), last state (b, n, d) float32, and the states entering
    every `chunk` steps for the backward, (b, chunks, n, d); with chunk 0 (no backward to come) none, (b, 0, n, d).

    The sequence is walked in _parts(...) parts in parallel (PARTS_OVERRIDE fixes the count).
    """
    _check(u, delta, A, B, C, D, z, delta_bias)
    b, d, length = u.shape
    n = A.shape[1]
    n_ck, ck = _chunking(length, chunk or WALK_CHUNK)
    bd, warps = _block_config(b, d, u.device)
    n_part = _parts(b, d, bd, n_ck, u.device)
    cpp = triton.cdiv(n_ck, n_part)  # saved-state chunks per part
    n_part = triton.cdiv(n_ck, cpp)
    f32 = {"device": u.device, "dtype": torch.float32}
    y = torch.empty_like(u)
    last = torch.empty(b, n, d, **f32)  # states are kept (n, d): d is the contiguous axis of every tile
    saved = torch.empty(b, n_ck if chunk else 0, n, d, **f32)
    ends, dtsums = torch.empty(b, n_part, n, d, **f32), torch.empty(b, n_part, d, **f32)
    A = A.t().contiguous()  # (n, d)
    zz = u if z is None else z
    np_ = _padded_n(n)
    common = dict(BD=bd, NP=np_, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  SOFTPLUS=delta_softplus, FAST_EXP=_fast_exp(u), EVEN_N=np_ == n, SAVE=chunk > 0,
                  DEPTH=_fwd_depth(b, d, bd, u.device), num_warps=warps, **_register_cap(FWD_MAXNREG))
    args = (u, delta, A, B, C, u if D is None else D, zz, u if delta_bias is None else delta_bias,
            y, last, saved, ends, dtsums, length, d, n, n_ck, ck, cpp, n_part, *_strides(u, delta, B, C, zz, y))
    if n_part > 1:
        _scan_fwd_kernel[(triton.cdiv(d, bd), b, n_part - 1)](*args, STATE_ONLY=True, **common)
    _scan_fwd_kernel[(triton.cdiv(d, bd), b, n_part)](*args, STATE_ONLY=False, **common)
    return y, last, saved


def scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, grad_y, grad_last=None):
    """Launch the backward; returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (None for absent inputs)."""
    b, d, length = u.shape
    n = A.shape[1]
    n_ck = saved.shape[1]  # the forward's chunks, whatever CHUNK was then
    if n_ck == 0:
        raise RuntimeError("the forward saved no states (it ran without inputs that need gradients)")
    ck = triton.cdiv(length, n_ck)
    bd, warps = _block_config(b, d, u.device, backward=True)
    nb = triton.cdiv(d, bd)
    np_ = _padded_n(n)
    f32 = {"device": u.device, "dtype": torch.float32}
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else du
    dB_part, dC_part = torch.empty(nb, b, length, n, **f32), torch.empty(nb, b, length, n, **f32)
    dA_part, dD_part, dbias_part = torch.empty(b, n, d, **f32), torch.empty(b, d, **f32), torch.empty(b, d, **f32)
    scratch = torch.empty(b * nb * (ck + 1 + ck * STORE_DECAY) * bd * np_, **f32)
    zz = u if z is None else z
    _scan_bwd_kernel[(nb, b)](
        u, delta, A.t().contiguous(), B, C, u if D is None else D, zz, u if delta_bias is None else delta_bias,
        saved, grad_y, saved if grad_last is None else grad_last.contiguous(),  # grad_last: (b, n, d)
        du, ddelta, dz, dB_part, dC_part, dA_part, dD_part, dbias_part, scratch,
        length, d, n, n_ck, ck, b, bd,
        *_strides(u, delta, B, C, zz, grad_y, du, ddelta, dz),
        BD=bd, NP=np_,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_GLAST=grad_last is not None, FAST_EXP=_fast_exp(u), EVEN_N=np_ == n, PREFETCH=BWD_PREFETCH,
        LOG_N=np_.bit_length() - 1 if SCATTER_SUMS and np_ <= bd else 0, LOG_BD=bd.bit_length() - 1,
        STORE_DECAY=STORE_DECAY, num_warps=warps, **_register_cap(BWD_MAXNREG),
    )
    dB = dB_part.sum(0).transpose(1, 2).to(B.dtype)  # (b, n, l)
    dC = dC_part.sum(0).transpose(1, 2).to(C.dtype)
    return (du, ddelta, dA_part.sum(0).t().contiguous().to(A.dtype), dB, dC,
            None if D is None else dD_part.sum(0).to(D.dtype),
            None if z is None else dz,
            None if delta_bias is None else dbias_part.sum(0).to(delta_bias.dtype))


# -- autograd, as torch.library custom ops (so torch.compile traces through the scan without a graph break) --
@torch.library.custom_op("dimstudy::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 delta_softplus: bool, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    b, d, length = u.shape
    n_ck = _chunking(length, chunk)[0] if chunk else 0
    f32 = {"dtype": torch.float32}
    return torch.empty_like(u), u.new_empty(b, A.shape[1], d, **f32), u.new_empty(b, n_ck, A.shape[1], d, **f32)


@torch.library.custom_op("dimstudy::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 delta_softplus: bool, saved: torch.Tensor, grad_y: torch.Tensor,
                 grad_last: torch.Tensor | None) -> list[torch.Tensor]:
    grads = scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, grad_y, grad_last)
    return [u.new_empty(0) if g is None else g for g in grads]  # custom ops return tensors: empty for "none"


@_scan_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, grad_y, grad_last):
    like = (u, delta, A, B, C, D, z, delta_bias)
    return [u.new_empty(0) if x is None else torch.empty_like(x) for x in like]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, _chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, grad_y, grad_last, _grad_saved):
    u, delta, A, B, C, D, z, delta_bias, saved = ctx.saved_tensors
    grads = _scan_bwd_op(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, saved, grad_y.contiguous()
                         if grad_y.stride(1) != 1 and grad_y.stride(2) != 1 else grad_y, grad_last)
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(None if x is None else g for x, g in zip(present, grads)), None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """The selective scan on the Triton kernels; same arguments and results as `selective_scan_ref`.

    Differentiable in u, delta, A, B, C, D, z and delta_bias (and through the last state). The last state
    is float32, like mamba-ssm's; y has u's dtype and u's memory layout.
    """
    one_group = B.dim() == 4
    if one_group:
        if B.shape[1] != 1 or C.dim() != 4 or C.shape[1] != 1:
            raise ValueError(f"B and C must be (b, n, l) or one group (b, 1, n, l); got {tuple(B.shape)}, "
                             f"{tuple(C.shape)}")
        B, C = B.squeeze(1), C.squeeze(1)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    backward = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
    y, last, _ = _scan_fwd_op(*inputs, bool(delta_softplus), CHUNK if backward else 0)
    return (y, last.transpose(1, 2)) if return_last_state else y  # last: (b, d, n), stored (b, n, d)
