//! Streaming (non-temporal) stores for outputs larger than the last-level cache.
//!
//! Memory traffic: a regular store to a line that is not in cache first reads the line from
//! memory (a read-for-ownership), so an op that reads `n` bytes and writes `n` moves `3n`
//! over the memory bus. A non-temporal store writes the whole 64-byte line without reading
//! it: `2n`. The price is that the line is not left in cache, so a consumer that reads the
//! output back soon pays a trip to memory. That is a loss while the output could have stayed
//! in cache, and free once it is larger than the last-level cache (LLC), where the consumer
//! would find only its tail there anyway. So an op streams its output when the output is at
//! least [`threshold`] bytes (the LLC's size, read from sysfs) and the CPU has AVX-512.
//!
//! Only full-line (512-bit) streaming stores pay here: on the Ice Lake VM a 128 MiB
//! `y = 2 x` ran at 22-24 GB/s with regular stores, 35-40 with 512-bit streaming stores, and
//! 18-20 with 256-bit ones (two half-line stores per line); so without AVX-512 nothing streams
//! (docs/PERF.md, session 20).
//!
//! A kernel writes its output through one of two wrappers, which call the kernel's own loop
//! unchanged:
//! - `RowScratch::write_row`: the kernel fills a whole row (softmax, a norm's row) in a
//!   task's scratch buffer that stays in L1/L2, which is then streamed to the output;
//! - `write_chunked`: for elementwise loops, one cache line at a time, each streamed as soon
//!   as it is computed. (A thread-local scratch taken and put back per 4 KiB piece made GELU
//!   25-33% slower: keep the scratch out of thread-local storage in inner loops.)
//!
//! With streaming off both call the kernel on the output directly. Either way the values are
//! the same bits; only the stores differ.
//!
//! `TESSERA_STREAMING_STORES=off` in the environment turns streaming off (to measure it).
//!
//! The module also holds the prefetch hints: `prefetch_ahead`, with which an elementwise loop
//! asks for its input 8 KiB ahead of the line it computes; `next_row` and `prefetch_piece`,
//! with which a row kernel asks for the next row, piece by piece, while it computes on this
//! one (the softmax's exp loop, the layer-norm backward's first pass); and `prefetch_write_all`
//! (`PREFETCHW`, where `has_prefetch_write`), with which the softmax asks for its next output
//! row's lines ready to be written, past the last-level cache, where its stores stay regular.

use std::mem::{size_of, MaybeUninit};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of a cache line, the unit of a streaming store.
const LINE: usize = 64;
/// Rows larger than this are written directly: their scratch copy would not stay in L2.
const MAX_ROW_BYTES: usize = 256 << 10;
/// The LLC size assumed when sysfs does not say.
const DEFAULT_LLC_BYTES: usize = 32 << 20;

/// 0: not decided yet; `usize::MAX`: never stream; otherwise the threshold in bytes.
static THRESHOLD: AtomicUsize = AtomicUsize::new(0);

/// The output size from which ops stream their stores, in bytes (`usize::MAX`: never).
pub fn threshold() -> usize {
    match THRESHOLD.load(Ordering::Relaxed) {
        0 => {
            let t = default_threshold();
            THRESHOLD.store(t, Ordering::Relaxed);
            t
        }
        t => t,
    }
}

/// Forces the threshold (tests compare the streamed and the direct paths; `usize::MAX`
/// turns streaming off, `1` streams every output). `None` goes back to the default.
#[doc(hidden)]
pub fn force_threshold(bytes: Option<usize>) {
    THRESHOLD.store(bytes.map_or(0, |b| b.max(1)), Ordering::Relaxed);
}

fn default_threshold() -> usize {
    let off = std::env::var("TESSERA_STREAMING_STORES").is_ok_and(|v| v == "off" || v == "0");
    if off || !has_full_line_stores() {
        return usize::MAX;
    }
    llc_bytes().unwrap_or(DEFAULT_LLC_BYTES)
}

/// Whether this CPU has 64-byte streaming stores (AVX-512F).
fn has_full_line_stores() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The size of the highest-level cache of CPU 0, from
/// `/sys/devices/system/cpu/cpu0/cache/index*/{level,size}` (`size` reads like `48M` or
/// `1280K`).
fn llc_bytes() -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Ok(level) = std::fs::read_to_string(format!("{dir}/level")) else {
            break;
        };
        let Ok(size) = std::fs::read_to_string(format!("{dir}/size")) else {
            continue;
        };
        let (Ok(level), Some(bytes)) = (level.trim().parse::<u32>(), parse_size(size.trim()))
        else {
            continue;
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, bytes));
        }
    }
    best.map(|(_, bytes)| bytes)
}

/// `48M` -> 48 MiB, `1280K` -> 1280 KiB, `512` -> 512 bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok().map(|d| d * unit)
}

/// Whether an op writing `bytes` of output should stream it. Decide once per op, not per row.
#[inline]
pub(crate) fn streams(bytes: usize) -> bool {
    bytes >= threshold()
}

/// One cache line of scratch, so a scratch buffer starts on a line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; LINE]);

/// A task's scratch row for [`RowScratch::write_row`] (make one per Rayon task, e.g. with
/// `for_each_init`: it grows to the longest row once, then is reused).
#[derive(Default)]
pub(crate) struct RowScratch {
    buf: Vec<Line>,
}

impl RowScratch {
    /// Calls `fill` on `out`, which it must write whole; when `stream` is set (and the row
    /// is small enough to stay in cache), `fill` writes this scratch row instead, which is
    /// then copied to `out` with streaming stores. `fill` sees a slice of `out`'s length.
    #[inline(always)]
    pub(crate) fn write_row<T: Copy>(
        &mut self,
        out: &mut [MaybeUninit<T>],
        stream: bool,
        fill: impl FnOnce(&mut [MaybeUninit<T>]),
    ) {
        const { assert!(std::mem::align_of::<T>() <= LINE) };
        let bytes = std::mem::size_of_val(out);
        if !stream || !(LINE..=MAX_ROW_BYTES).contains(&bytes) {
            fill(out);
            return;
        }
        let lines = bytes.div_ceil(LINE);
        if self.buf.len() < lines {
            self.buf.resize(lines, Line([0; LINE]));
        }
        // SAFETY: `buf` holds at least `bytes` bytes, aligned for `T` (64 >= align_of T), and
        // `MaybeUninit<T>` accepts any contents.
        let scratch = unsafe {
            let ptr = self.buf.as_mut_ptr().cast::<MaybeUninit<T>>();
            std::slice::from_raw_parts_mut(ptr, out.len())
        };
        fill(scratch);
        // SAFETY: `fill` wrote every element of `scratch` (the caller's contract); `buf` and
        // `out` are distinct.
        unsafe { copy_streaming(scratch.as_ptr().cast(), out.as_mut_ptr().cast(), bytes) };
    }
}

/// [`RowScratch::write_row`] for loops whose elements are independent: `fill(offset, piece)`
/// writes the `piece` that stands for `out[offset..offset + piece.len()]`. When streaming,
/// the pieces are single cache lines, each computed into a 64-byte scratch that stays in a
/// register and streamed as soon as it is done (the partial lines at either end of `out` are
/// written directly), then one store fence; otherwise one call over all of `out`.
///
/// One line at a time, not a burst: computing 4 KiB pieces into scratch and then streaming
/// their 64 lines back to back held the core's line-fill buffers, which the loads ahead also
/// need, so the arithmetic and the memory traffic took turns. Line by line, on 128 MiB with 2
/// threads: GELU 13.5-14.0 -> 10.9-11.6 ms, exp 14.9-15.5 -> 11.4-11.8, add 12.9-13.7 ->
/// 11.6-12.0, relu 8.9-9.1 -> 7.3-7.4 (docs/PERF.md, session 23).
#[inline(always)]
pub(crate) fn write_chunked<T: Copy>(
    out: &mut [MaybeUninit<T>],
    stream: bool,
    mut fill: impl FnMut(usize, &mut [MaybeUninit<T>]),
) {
    const { assert!(std::mem::align_of::<T>() <= LINE) };
    let size = size_of::<T>();
    if !stream || size == 0 || !LINE.is_multiple_of(size) || !has_full_line_stores() {
        fill(0, out);
        return;
    }
    let per_line = LINE / size;
    let len = out.len();
    // Elements before the first line boundary, then whole lines, then the rest.
    let head = ((out.as_ptr() as usize).wrapping_neg() % LINE / size).min(len);
    let end = head + (len - head) / per_line * per_line;
    fill(0, &mut out[..head]);
    let mut line = MaybeUninit::<Line>::uninit();
    for start in (head..end).step_by(per_line) {
        // SAFETY: `line` holds 64 bytes on a line boundary, `per_line` elements of `T`.
        let scratch = unsafe {
            std::slice::from_raw_parts_mut(line.as_mut_ptr().cast::<MaybeUninit<T>>(), per_line)
        };
        fill(start, scratch);
        // SAFETY: `fill` wrote the whole line; `out[start..start + per_line]` is one whole
        // line of `out` (it starts on a boundary), and AVX-512F is present.
        unsafe { stream_line(scratch.as_ptr().cast(), out[start..].as_mut_ptr().cast()) };
    }
    fill(end, &mut out[end..]);
    fence();
}

/// Asks for the cache line holding `v` to be brought into L1, without waiting for it.
#[inline(always)]
pub(crate) fn prefetch<T>(v: &T) {
    prefetch_address(v as *const T);
}

/// [`prefetch`] of any address: a prefetch never faults and reads nothing the program sees,
/// so `p` may point anywhere (past a slice's end included).
#[inline(always)]
fn prefetch_address<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How far ahead of the line it computes an elementwise loop prefetches its input: 8 KiB. The
/// hardware's L2 streamer stops at each 4 KiB page and restarts on the next page's first
/// misses; the software prefetch keeps the reads going across pages. Prefetching each line's
/// input 2, 4, 8, 16 and 32 KiB ahead, GELU on 128 MiB (2 threads) took 8.9-9.7, 8.7-9.3,
/// 8.4-9.1, 8.9-9.2 and 9.7-9.9 ms, 10.8-11.5 without (docs/PERF.md, session 23).
const PREFETCH_AHEAD_BYTES: usize = 8 << 10;

/// Prefetches the line of `v` [`PREFETCH_AHEAD_BYTES`] past element `off` (past the end of
/// `v` too: a prefetch never faults, and in a loop split over tasks the next task's input is
/// what follows).
#[inline(always)]
pub(crate) fn prefetch_ahead<T>(v: &[T], off: usize) {
    let ahead = PREFETCH_AHEAD_BYTES / size_of::<T>().max(1);
    prefetch_address(v.as_ptr().wrapping_add(off + ahead));
}

/// Prefetches every cache line of `v` (see [`prefetch`]).
#[inline(always)]
pub(crate) fn prefetch_all<T>(v: &[T]) {
    let per = (LINE / size_of::<T>().max(1)).max(1);
    for i in (0..v.len()).step_by(per) {
        prefetch(&v[i]);
    }
}

/// Row `r + 1` of `v` cut in rows of `len`, or nothing when `r` is the last row: what a row
/// kernel prefetches piece by piece ([`prefetch_piece`]) while it computes row `r`.
pub(crate) fn next_row<T>(v: &[T], r: usize, len: usize) -> &[T] {
    v.get((r + 1) * len..(r + 2) * len).unwrap_or(&[])
}

/// Prefetches piece `c` of `next` (elements `c * piece` up to `(c + 1) * piece`, cut at its
/// end; nothing past it): a row kernel working through its row in pieces asks for the matching
/// piece of the next row, so that row's reads from memory overlap this row's arithmetic.
#[inline(always)]
pub(crate) fn prefetch_piece<T>(next: &[T], c: usize, piece: usize) {
    let start = (c * piece).min(next.len());
    prefetch_all(&next[start..(start + piece).min(next.len())]);
}

/// [`prefetch_piece`] for writing: piece `c` of the `len` elements from `p` (cut at `len`;
/// nothing past it) asked for ready to be written ([`prefetch_write_all`]), so a row kernel's
/// next output row is owned before its stores reach it. Only call it when
/// [`has_prefetch_write`].
#[inline(always)]
pub(crate) fn prefetch_write_piece<T>(p: *const T, len: usize, c: usize, piece: usize) {
    let start = (c * piece).min(len);
    prefetch_write_all(p.wrapping_add(start), piece.min(len - start));
}

/// Whether this CPU has `PREFETCHW` (CPUID leaf 0x8000_0001, ECX bit 8: Intel from Broadwell,
/// AMD since 3DNow!), asked once.
pub(crate) fn has_prefetch_write() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            // Leaf 0x8000_0001 is asked only when the highest extended leaf reaches it.
            use std::arch::x86_64::__cpuid;
            __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Asks for every cache line of the `len` elements from `p` to be brought into L1 ready to be
/// written (`PREFETCHW`): the stores that follow then find their lines owned, instead of each
/// line's first store waiting for a read-for-ownership from memory. A hint: it never faults and
/// reads or writes nothing, whatever the address (so `p` may point anywhere). Only call it when
/// [`has_prefetch_write`] (the compiler emits `PREFETCHW` only for a target feature that
/// stable Rust cannot enable, hence the assembly).
#[inline(always)]
pub(crate) fn prefetch_write_all<T>(p: *const T, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let per = (LINE / size_of::<T>().max(1)).max(1);
        for i in (0..len).step_by(per) {
            // SAFETY: a prefetch never faults and accesses no memory the program sees.
            unsafe {
                std::arch::asm!(
                    "prefetchw [{0}]",
                    in(reg) p.wrapping_add(i),
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Copies `bytes` bytes from `src` to `dst` (which must not overlap), the whole lines of
/// `dst` with streaming stores, the partial lines at either end with regular ones. Ends with
/// a store fence, so the data is visible to whichever thread synchronizes with this one next.
///
/// # Safety
/// `src` must be readable and `dst` writable for `bytes` bytes, and the ranges must not
/// overlap.
pub(crate) unsafe fn copy_streaming(src: *const u8, dst: *mut u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_full_line_stores() {
        let head = (dst as usize).wrapping_neg() % LINE;
        let head = head.min(bytes);
        let lines = (bytes - head) / LINE;
        let tail = bytes - head - lines * LINE;
        // SAFETY: the three ranges split `[0, bytes)`; the caller vouches for the pointers.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, head);
            stream_lines(src.add(head), dst.add(head), lines);
            let done = head + lines * LINE;
            std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), tail);
        }
        return;
    }
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, bytes) };
}

/// One 64-byte line from `src` to `dst` (both on a line), streamed. Inlined into the caller's
/// AVX-512 loop, it is one load, which the compiler folds into the register just computed, and
/// one `vmovntdq`.
///
/// # Safety
/// AVX-512F must be present; `src` and `dst` 64-byte aligned and valid for 64 bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn stream_line(src: *const u8, dst: *mut u8) {
    use std::arch::x86_64::{__m512i, _mm512_load_si512, _mm512_stream_si512};
    // SAFETY: the caller's contract.
    unsafe { _mm512_stream_si512(dst.cast::<__m512i>(), _mm512_load_si512(src.cast())) };
}

/// Without x86-64 nothing streams ([`has_full_line_stores`] is false), so this never runs.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream_line(_: *const u8, _: *mut u8) {
    unreachable!("streaming stores are x86-64 only")
}

/// A store fence (`SFENCE`) where streaming stores are used: the lines streamed before it are
/// visible to whichever thread synchronizes with this one next.
#[inline(always)]
fn fence() {
    #[cfg(target_arch = "x86_64")]
    if has_full_line_stores() {
        // SAFETY: SSE is part of x86-64.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

/// `lines` 64-byte lines from `src` (any alignment) to `dst` (on a line), streamed.
///
/// # Safety
/// AVX-512F must be present; `dst` 64-byte aligned; both ranges valid for `64 * lines` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_lines(src: *const u8, dst: *mut u8, lines: usize) {
    use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512, _mm_sfence};
    for i in 0..lines {
        // SAFETY: line `i` is inside both ranges; `dst + 64 i` is 64-byte aligned.
        unsafe {
            let v = _mm512_loadu_si512(src.add(i * LINE).cast::<__m512i>());
            _mm512_stream_si512(dst.add(i * LINE).cast::<__m512i>(), v);
        }
    }
    _mm_sfence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_row_and_its_pieces_stay_inside_the_slice() {
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        assert_eq!(next_row(&v, 0, 4), &v[4..8]);
        assert!(
            next_row(&v, 1, 4).is_empty(),
            "a partial last row is not a row"
        );
        assert!(next_row(&v, 7, 4).is_empty());
        // Pieces past the end, a partial last piece and an empty row are hints, not panics.
        for c in 0..5 {
            prefetch_piece(&v[4..8], c, 3);
            prefetch_piece(&[] as &[f32], c, 3);
            if has_prefetch_write() {
                prefetch_write_piece(v[4..].as_ptr(), 4, c, 3);
                prefetch_write_piece(v.as_ptr(), 0, c, 3);
            }
        }
    }

    #[test]
    fn sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("48M"), Some(48 << 20));
        assert_eq!(parse_size("1280K"), Some(1280 << 10));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn streamed_copy_matches_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0u8; 1100];
        for offset in [0, 1, 13, 63, 64, 65] {
            for len in [0, 1, 63, 64, 65, 128, 200, 999 - offset] {
                dst.fill(0xAA);
                // SAFETY: `offset + len <= 1000 < 1100`; the vectors are distinct.
                unsafe { copy_streaming(src[offset..].as_ptr(), dst[offset..].as_mut_ptr(), len) };
                assert_eq!(&dst[offset..offset + len], &src[offset..offset + len]);
                assert!(
                    dst[..offset].iter().all(|&b| b == 0xAA),
                    "wrote before the range"
                );
                assert!(
                    dst[offset + len..].iter().all(|&b| b == 0xAA),
                    "wrote past the range"
                );
            }
        }
    }

    #[test]
    fn wrappers_write_what_the_kernel_computes() {
        let n = 5000;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        for stream in [false, true] {
            let mut out = vec![MaybeUninit::new(f32::NAN); n + 3];
            // An output that does not start on a line.
            let out = &mut out[3..];
            write_chunked(out, stream, |off, piece| {
                for (j, o) in piece.iter_mut().enumerate() {
                    o.write(x[off + j] * 2.0);
                }
            });
            // SAFETY: every element was written.
            let got: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
            let want: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
            assert_eq!(got, want, "write_chunked, stream {stream}");

            let mut row = vec![MaybeUninit::new(0f64); 777];
            RowScratch::default().write_row(&mut row, stream, |r| {
                for (j, o) in r.iter_mut().enumerate() {
                    o.write(j as f64 + 0.5);
                }
            });
            // SAFETY: every element was written.
            assert!(row
                .iter()
                .enumerate()
                .all(|(j, v)| unsafe { v.assume_init() } == j as f64 + 0.5));
        }
    }
}
