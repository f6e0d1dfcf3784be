//! Shared by the `fuzz_*` test binaries of every crate (included with `#[path]`): the case
//! count, a capped global allocator, and byte mutations of valid inputs.
//!
//! # Case count
//! `PROPTEST_CASES=N` sets the cases of every property. Without it a property runs its short
//! CI default; `TICKMESH_FUZZ_LONG=1` multiplies that by 100 for a long run on a spare
//! machine (`TICKMESH_FUZZ_LONG=1 cargo test -p tickmesh-codec --test fuzz_codec`).
//!
//! # Bounded allocation
//! [`Capped`] refuses (returns null for) any single allocation above [`ALLOC_CAP`] and
//! remembers its size. The inputs here are a few KiB at most, so an allocation that large
//! can only come from trusting a length field (a declared length of 2^60, say). A refused
//! allocation aborts the test binary with "memory allocation of N bytes failed"; a
//! property can also call [`assert_no_huge_alloc`] to fail with the size instead.

#![allow(dead_code, unreachable_pub)]

use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Largest single allocation a fuzz test tolerates.
pub const ALLOC_CAP: usize = 64 << 20;

static LARGEST_REFUSED: AtomicUsize = AtomicUsize::new(0);

/// The system allocator with a per-allocation cap (see the module docs).
pub struct Capped;

fn over_cap(size: usize) -> bool {
    if size > ALLOC_CAP {
        LARGEST_REFUSED.fetch_max(size, Ordering::Relaxed);
        return true;
    }
    false
}

// SAFETY: every call is forwarded unchanged to `System`, except that allocations above the
// cap return null, which `GlobalAlloc` allows (it signals allocation failure).
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through us with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_cap(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Fails if any allocation over [`ALLOC_CAP`] was attempted so far in this binary.
pub fn assert_no_huge_alloc() {
    let n = LARGEST_REFUSED.load(Ordering::Relaxed);
    assert_eq!(n, 0, "an allocation of {n} bytes was attempted: a length field was trusted");
}

/// Cases for a property whose short CI run is `short` (see the module docs).
pub fn cases(short: u32) -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    if std::env::var("TICKMESH_FUZZ_LONG").is_ok_and(|v| v == "1") {
        return short.saturating_mul(100);
    }
    short
}

/// Proptest settings with [`cases`], no failure persistence file (the seeds of a failure are
/// printed; keeping regression files is the job of the crate's own property tests).
pub fn config(short: u32) -> ProptestConfig {
    ProptestConfig { cases: cases(short), failure_persistence: None, ..ProptestConfig::default() }
}

/// One change to a valid input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip bit `bit` of the byte at `pos` (modulo the length).
    BitFlip { pos: usize, bit: u8 },
    /// Set the byte at `pos` to `value`.
    SetByte { pos: usize, value: u8 },
    /// Overwrite bytes at `pos` with a "length-like" value: all ones, a huge power of two,
    /// zero, or one more than the input, in 2, 4 or 8 bytes, either byte order.
    Length { pos: usize, width: u8, value: u64, big_endian: bool },
    /// Cut the input to `len` bytes (modulo its length + 1).
    Truncate { len: usize },
    /// Insert bytes at `pos`.
    Insert { pos: usize, bytes: Vec<u8> },
    /// Remove up to `n` bytes at `pos`.
    Remove { pos: usize, n: usize },
    /// Copy a piece of the input over another place (duplicated headers, shifted frames).
    Splice { from: usize, to: usize, n: usize },
}

/// A strategy for one mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    let len_value = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 60),
        Just(1u64 << 31),
        Just(0u64),
        Just(0xFFFF_FFFFu64),
        Just(0xFFFFu64),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(pos, bit)| Mutation::BitFlip { pos, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(pos, value)| Mutation::SetByte { pos, value }),
        2 => (any::<usize>(), prop_oneof![Just(2u8), Just(4), Just(8)], len_value, any::<bool>())
            .prop_map(|(pos, width, value, big_endian)| Mutation::Length { pos, width, value, big_endian }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(pos, bytes)| Mutation::Insert { pos, bytes }),
        1 => (any::<usize>(), 1usize..32).prop_map(|(pos, n)| Mutation::Remove { pos, n }),
        1 => (any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(from, to, n)| Mutation::Splice { from, to, n }),
    ]
}

/// A strategy for 1 to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=max)
}

/// Applies `muts` to a copy of `input`. Positions are taken modulo the current length.
pub fn mutate(input: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in muts {
        let len = b.len();
        match m {
            Mutation::BitFlip { pos, bit } if len > 0 => b[pos % len] ^= 1 << bit,
            Mutation::SetByte { pos, value } if len > 0 => b[pos % len] = *value,
            Mutation::Length { pos, width, value, big_endian } => {
                let w = usize::from(*width);
                if len >= w {
                    let at = pos % (len - w + 1);
                    let bytes = if *big_endian { value.to_be_bytes() } else { value.to_le_bytes() };
                    let src = if *big_endian { &bytes[8 - w..] } else { &bytes[..w] };
                    b[at..at + w].copy_from_slice(src);
                }
            }
            Mutation::Truncate { len: n } => b.truncate(n % (len + 1)),
            Mutation::Insert { pos, bytes } => {
                let at = pos % (len + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { pos, n } if len > 0 => {
                let at = pos % len;
                let end = (at + n).min(len);
                b.drain(at..end);
            }
            Mutation::Splice { from, to, n } if len > 0 => {
                let f = from % len;
                let t = to % len;
                let n = (*n).min(len - f).min(len - t);
                let piece = b[f..f + n].to_vec();
                b[t..t + n].copy_from_slice(&piece);
            }
            _ => {}
        }
    }
    b
}

/// Splits `b` into pieces at the given cut points (modulo its length), for feeding a
/// streaming decoder in chunks.
pub fn chunks<'a>(b: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| if b.is_empty() { 0 } else { c % b.len() }).collect();
    at.push(0);
    at.push(b.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &b[w[0]..w[1]]).collect()
}
