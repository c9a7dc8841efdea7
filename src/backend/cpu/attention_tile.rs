//! The f32 AVX-512 register tile behind every product of the CPU attention
//! (`attention.rs`): `Y[r][0..16·V] (+)= Σ_k A(r, k) · B[k][0..16·V]` for `R` rows, with `A`
//! read as scalars at any two strides and `B`'s rows contiguous. The scores `S = Q·Kᵀ` (B the
//! transposed key block), `O += P·V`, `dQ += dS·K` (A a tile of probabilities, B the rows
//! of V or K) and `dV += Pᵀ·dO`, `dK += dSᵀ·Q` (A the tile read down its columns) are all
//! this one shape.
//!
//! Why intrinsics: the portable version (`[[T; N]; R]` accumulators in `attention.rs`)
//! depends on LLVM keeping the array in registers, which it does for some `(R, N)` and not
//! for others (4 x 32 f32 compiled to scalar code on the stack, ~6x slower). Here the
//! `R x V` accumulators are `__m512` values; per step of `k`, `V` loads of B and `R`
//! broadcasts of A feed `R·V` multiply-adds.
//!
//! Same bits as the portable loops: every element is `acc = fma(a, b, acc)` (one fused
//! multiply-add, rounded once), `k` ascending, starting from Y's values or from +0.0, exactly
//! as `Float::fused_mul_add` computes it there (`tests/simd.rs` compares the instruction sets
//! bit for bit). A multiply and an add (rounded twice, as before session 13) took two of the
//! two vector pipes' slots per product term instead of one: the forward ran at 0.62-0.81x
//! PyTorch on an AVX-512 Xeon with two FMA pipes.
//! Cost per call: `2·R·16·V·k` FLOPs; B's `k x 16V` block is read once, A's `R x k` once.

/// One tile's operands: `Y[r][..] (+)= Σ_{k < depth} a[r·a_rs + k·a_ks] · b[k·b_ks..][..16V]`,
/// `Y[r]` at `y[r·y_rs..]`.
pub(super) struct TileArgs<'a> {
    pub depth: usize,
    pub a: &'a [f32],
    pub a_rs: usize,
    pub a_ks: usize,
    pub b: &'a [f32],
    pub b_ks: usize,
    pub y_rs: usize,
    /// Add to Y's values (else overwrite them, the sums starting from +0.0).
    pub accumulate: bool,
}

/// Runs the `R x 16V` tile on AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F (`simd::isa() == Isa::Avx512`). The slice bounds are checked
/// here.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn tile_avx512<const R: usize, const V: usize>(t: &TileArgs, y: &mut [f32]) {
    let w = 16 * V;
    if t.depth > 0 {
        assert!(
            t.a.len() > (R - 1) * t.a_rs + (t.depth - 1) * t.a_ks,
            "tile: A"
        );
        assert!(t.b.len() >= (t.depth - 1) * t.b_ks + w, "tile: B");
    }
    assert!(y.len() >= (R - 1) * t.y_rs + w, "tile: Y");
    // SAFETY: the bounds are checked above; AVX-512F is the caller's promise.
    unsafe { tile_avx512_raw::<R, V>(t, y.as_mut_ptr()) }
}

/// # Safety
/// See [`tile_avx512`]; here the bounds are the caller's too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512_raw<const R: usize, const V: usize>(t: &TileArgs, y: *mut f32) {
    use std::arch::x86_64::*;
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    // SAFETY: every offset below is inside the bounds `tile_avx512` checked.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if t.accumulate {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (v, x) in acc_r.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(y.add(r * t.y_rs + 16 * v));
                }
            }
        }
        for k in 0..t.depth {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(k * t.b_ks + 16 * v));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * t.a_rs + k * t.a_ks));
                for (x, &bx) in acc_r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &x) in acc_r.iter().enumerate() {
                _mm512_storeu_ps(y.add(r * t.y_rs + 16 * v), x);
            }
        }
    }
}
