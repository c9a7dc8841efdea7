//! Counter-based random numbers (Philox 4x32-10, Salmon et al., SC'11). The value at element
//! `i` of a draw depends only on (seed, offset, i), so any backend (a CUDA kernel included)
//! produces the same numbers for the same seed without sharing sequential state.
//!
//! A global generator hands each draw a fresh `offset` (a Philox subsequence), like PyTorch's
//! Philox offset; its state (seed, offset) is saved in checkpoints so a resumed run draws the
//! same numbers as an uninterrupted one.

use std::sync::Mutex;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox4x32 on `counter` with `key`.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The four 32-bit words of block `block` of subsequence `offset` under `seed`.
#[inline]
pub fn philox_block(seed: u64, offset: u64, block: u64) -> [u32; 4] {
    philox4x32(
        [
            block as u32,
            (block >> 32) as u32,
            offset as u32,
            (offset >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Uniform in [0, 1) with 24 random bits (exactly representable in f32, so f32 and f64 agree).
#[inline]
pub fn u32_to_unit(x: u32) -> f64 {
    (x >> 8) as f64 * (1.0 / 16_777_216.0)
}

/// Element `i` of a uniform [0, 1) draw.
#[inline]
pub fn uniform_at(seed: u64, offset: u64, i: u64) -> f64 {
    philox_block(seed, offset, i / 4)[(i % 4) as usize].pipe(u32_to_unit)
}

/// Element `i` of a standard normal draw (Box-Muller on words 0 and 1 of block i/2).
#[inline]
pub fn normal_at(seed: u64, offset: u64, i: u64) -> f64 {
    let w = philox_block(seed, offset, i / 2);
    let u1 = ((w[0] >> 8) as f64 + 1.0) * (1.0 / 16_777_216.0); // (0, 1]
    let u2 = u32_to_unit(w[1]);
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = 2.0 * std::f64::consts::PI * u2;
    if i.is_multiple_of(2) {
        r * theta.cos()
    } else {
        r * theta.sin()
    }
}

trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl Pipe for u32 {}

/// Generator state: the seed and the next subsequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngState {
    pub seed: u64,
    pub offset: u64,
}

static GLOBAL: Mutex<RngState> = Mutex::new(RngState {
    seed: 0x5EED,
    offset: 0,
});

/// Reseeds the global generator (like `torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner()) = RngState { seed, offset: 0 };
}
pub fn rng_state() -> RngState {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}
pub fn set_rng_state(s: RngState) {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner()) = s;
}
thread_local! {
    static DRAWS_ON_THIS_THREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many draws from the global stream this thread has taken. Code that runs a closure on
/// the pool and must know whether *that closure* drew (the data-parallel step) compares it
/// before and after: unlike the global state, other threads' draws do not move it.
pub fn draws_on_this_thread() -> u64 {
    DRAWS_ON_THIS_THREAD.with(|d| d.get())
}

/// Takes the next subsequence for one draw.
pub fn next_draw() -> (u64, u64) {
    DRAWS_ON_THIS_THREAD.with(|d| d.set(d.get() + 1));
    let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = (g.seed, g.offset);
    g.offset += 1;
    out
}

/// A small local generator for host-side sampling (data shuffles, jitter), seeded explicitly.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { seed, counter: 0 }
    }
    pub fn next_u32(&mut self) -> u32 {
        let w = philox_block(self.seed, u64::MAX, self.counter / 4)[(self.counter % 4) as usize];
        self.counter += 1;
        w
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        u32_to_unit(self.next_u32())
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u32() as u64 * n as u64) >> 32) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn philox_known_answer() {
        // Random123's known-answer test for philox4x32-10.
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([0xffffffff; 4], [0xffffffff; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }
    #[test]
    fn normal_moments() {
        let n = 200_000u64;
        let xs: Vec<f64> = (0..n).map(|i| normal_at(3, 1, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
    }
}
