//! Runs a loop compiled for the widest vector instructions this CPU has, chosen at run time.
//!
//! The crate is built for baseline x86-64 (SSE2) so that one binary runs everywhere; LLVM then
//! vectorizes loops 4 f32 lanes wide at most, and leaves loops whose body converts to f64
//! (GELU's erf) or shuffles bits (the branch-free `exp`) scalar. [`vectorized`] calls a closure
//! from inside a function compiled with AVX-512 (or AVX2 + FMA) enabled; the closure and the
//! element functions it calls are `#[inline(always)]`, so their loops are compiled, and
//! vectorized, for that instruction set: 16 f32 lanes instead of 4.
//!
//! Results do not depend on the instruction set: Rust never contracts `a * b + c` into an FMA
//! nor reorders floating-point sums on its own, so a wider loop computes the same values in
//! the same order (the tests compare the paths bit for bit).
//!
//! Usage: `vectorized(#[inline(always)] || for (o, &x) in out.iter_mut().zip(a) { *o = f(x) })`.
//! The closure must be `#[inline(always)]`: a closure left out of line is compiled for the
//! baseline and gains nothing.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets [`vectorized`] can compile a loop for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/VL/BW/DQ with AVX2 and FMA: 16 f32 lanes.
    Avx512,
    /// AVX2 and FMA: 8 f32 lanes.
    Avx2,
    /// What the binary was built for (SSE2 on x86-64, or another architecture).
    Baseline,
}

/// 0: not detected yet; else `1 + Isa as u8`; a forced choice (tests) is stored the same way.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
        {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// The instruction set [`vectorized`] uses on this CPU.
pub fn isa() -> Isa {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Isa::Avx512,
        2 => Isa::Avx2,
        3 => Isa::Baseline,
        _ => {
            let isa = detect();
            CHOSEN.store(encode(isa), Ordering::Relaxed);
            isa
        }
    }
}

fn encode(isa: Isa) -> u8 {
    match isa {
        Isa::Avx512 => 1,
        Isa::Avx2 => 2,
        Isa::Baseline => 3,
    }
}

/// Forces the instruction set (tests and benchmarks compare the paths). Asking for one the
/// CPU lacks is refused: the previous choice stays and `false` is returned.
pub fn force_isa(isa: Isa) -> bool {
    let supported = matches!(
        (detect(), isa),
        (_, Isa::Baseline) | (Isa::Avx512, _) | (Isa::Avx2, Isa::Avx2)
    );
    if supported {
        CHOSEN.store(encode(isa), Ordering::Relaxed);
    }
    supported
}

/// Calls `f` compiled for [`isa`]; see the module documentation.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    match isa() {
        // SAFETY: `isa()` only returns an instruction set `detect()` found on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(f) },
        _ => f(),
    }
}

/// Calls `f` compiled for `want`, or for the widest instruction set below it that this CPU
/// has (another module's choice, such as the GEMM micro-kernel's, may need fewer features
/// than [`Isa::Avx512`] enables here).
#[inline(always)]
pub fn vectorized_at<R>(want: Isa, f: impl FnOnce() -> R) -> R {
    let have = detect();
    let run = match (want, have) {
        (Isa::Baseline, _) | (_, Isa::Baseline) => Isa::Baseline,
        (Isa::Avx512, Isa::Avx512) => Isa::Avx512,
        _ => Isa::Avx2,
    };
    match run {
        // SAFETY: `run` is never wider than what `detect()` found on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
