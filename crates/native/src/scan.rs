//! Byte scans on the parsers' hot paths, sixteen bytes per step on x86_64
//! (SSE2 is part of its baseline, so no runtime detection is needed) and
//! byte by byte elsewhere.
//!
//! Completions are mostly long runs of ordinary text; these scans find the
//! few bytes that matter in them.
//!
//! The only `unsafe` code in the crate is here, in the SSE2 loops: each
//! block states why its loads stay in bounds.
#![allow(unsafe_code)]

/// Position of the first byte that ends or interrupts a plain JSON string:
/// a quote, a backslash or a control character (below 0x20).
pub(crate) fn json_string_stop(b: &[u8]) -> Option<usize> {
    let mut offset = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is always present on x86_64, and each load reads the
        // 16 bytes at `offset`, which the loop condition keeps inside `b`.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let control = _mm_set1_epi8(0x1f);
            while offset + 16 <= b.len() {
                let x = _mm_loadu_si128(b.as_ptr().add(offset).cast());
                // min(x, 0x1f) == x exactly when x <= 0x1f (unsigned).
                let hits = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                    _mm_cmpeq_epi8(_mm_min_epu8(x, control), x),
                );
                let mask = _mm_movemask_epi8(hits) as u32;
                if mask != 0 {
                    return Some(offset + mask.trailing_zeros() as usize);
                }
                offset += 16;
            }
        }
    }
    b[offset..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|k| offset + k)
}

/// Position of the first byte that is a line break of `str.splitlines()`
/// other than `\n` in ASCII (`\v`, `\f`, `\r`, `\x1c`–`\x1e`), or not ASCII.
pub(crate) fn ascii_break_or_non_ascii(b: &[u8]) -> Option<usize> {
    let is_break = |c: u8| matches!(c, 0x0b..=0x0d | 0x1c..=0x1e);
    let mut offset = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_sub_epi8,
        };
        // SAFETY: as in `json_string_stop`.
        unsafe {
            let (low, high, width) = (_mm_set1_epi8(0x0b), _mm_set1_epi8(0x1c), _mm_set1_epi8(2));
            while offset + 16 <= b.len() {
                let x = _mm_loadu_si128(b.as_ptr().add(offset).cast());
                // x - start <= 2 (unsigned) puts x in one of the two 3-byte ranges.
                let (a, c) = (_mm_sub_epi8(x, low), _mm_sub_epi8(x, high));
                let breaks =
                    _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(a, width), a), _mm_cmpeq_epi8(_mm_min_epu8(c, width), c));
                // The high bit of each byte marks non-ASCII.
                let mask = (_mm_movemask_epi8(breaks) | _mm_movemask_epi8(x)) as u32;
                if mask != 0 {
                    return Some(offset + mask.trailing_zeros() as usize);
                }
                offset += 16;
            }
        }
    }
    b[offset..].iter().position(|&c| is_break(c) || c >= 0x80).map(|k| offset + k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(b: &[u8], stop: impl Fn(u8) -> bool) -> Option<usize> {
        b.iter().position(|&c| stop(c))
    }

    /// Every interesting byte at every offset within and across 16-byte blocks.
    #[test]
    fn scans_agree_with_byte_loops() {
        let json_stop = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        let line_stop = |c: u8| matches!(c, 0x0b..=0x0d | 0x1c..=0x1e) || c >= 0x80;
        for len in 0..48 {
            for at in 0..=len {
                for byte in
                    [b'"', b'\\', 0x00, 0x0a, 0x0b, 0x0d, 0x0e, 0x1b, 0x1c, 0x1e, 0x1f, 0x20, 0x7f, 0x80, 0xe2, b'a']
                {
                    let mut b = vec![b'x'; len];
                    if at < len {
                        b[at] = byte;
                    }
                    assert_eq!(json_string_stop(&b), naive(&b, json_stop), "{b:?}");
                    assert_eq!(ascii_break_or_non_ascii(&b), naive(&b, line_stop), "{b:?}");
                }
            }
        }
    }
}
