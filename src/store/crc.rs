//! CRC-32C (Castagnoli), the per-chunk checksum: with the SSE 4.2 instruction where the CPU has
//! it, three streams at once (the instruction's latency is three times its throughput), else
//! slice-by-8 tables.
//!
//! Reads check it on every chunk; SHA-1 (about 1.4 GB/s with the SHA extensions) would cap the
//! speed of a large GET below what loopback TCP carries. SHA-1 stays what names a blob and what
//! `verify` re-computes.

const POLY: u32 = 0x82F6_3B78;

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = tables();

/// A linear operator on the CRC register, as the images of its 32 bits.
type Operator = [u32; 32];

const fn apply(m: &Operator, v: u32) -> u32 {
    let mut out = 0;
    let mut i = 0;
    while i < 32 {
        if v & (1 << i) != 0 {
            out ^= m[i];
        }
        i += 1;
    }
    out
}

/// The operator "feed `2^doublings` zero bytes" (the register is not inverted).
const fn zeros(doublings: u32) -> Operator {
    let t = tables();
    let mut m = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        let r = 1u32 << i;
        m[i] = (r >> 8) ^ t[0][(r & 0xff) as usize];
        i += 1;
    }
    let mut d = 0;
    while d < doublings {
        let mut sq = [0u32; 32];
        let mut i = 0;
        while i < 32 {
            sq[i] = apply(&m, m[i]);
            i += 1;
        }
        m = sq;
        d += 1;
    }
    m
}

/// Bytes of each of the three streams the hardware path runs at once.
const LANE: usize = 1 << 13;
static SHIFT_LANE: Operator = zeros(13);
static SHIFT_2LANES: Operator = zeros(14);

/// Continues a CRC-32C: `update(update(0, a), b) == update(0, a ++ b)`.
pub(crate) fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2 (checked just above).
            return unsafe { update_sse42(crc, data) };
        }
    }
    update_soft(crc, data)
}

fn update_soft(crc: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut c = !crc;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ c;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in words.remainder() {
        c = (c >> 8) ^ t[0][((c ^ b as u32) & 0xff) as usize];
    }
    !c
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_le_bytes(w)
    };
    let mut c = !crc as u64;
    // Three lanes of one block in parallel, then joined: crc(a|b|c) is the register after `a`
    // moved past 2 lanes of zeros, xor `b`'s moved past one, xor `c`'s.
    let mut blocks = data.chunks_exact(3 * LANE);
    for block in &mut blocks {
        let (a, rest) = block.split_at(LANE);
        let (b, cc) = rest.split_at(LANE);
        let (mut ra, mut rb, mut rc) = (c, 0u64, 0u64);
        for k in (0..LANE).step_by(8) {
            ra = _mm_crc32_u64(ra, word(&a[k..]));
            rb = _mm_crc32_u64(rb, word(&b[k..]));
            rc = _mm_crc32_u64(rc, word(&cc[k..]));
        }
        c = (apply(&SHIFT_2LANES, ra as u32) ^ apply(&SHIFT_LANE, rb as u32) ^ rc as u32) as u64;
    }
    let data = blocks.remainder();
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(b));
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// The checksum kept with chunk `index` of blob `key`: over the key, the index and the bytes,
/// so a chunk stored under the wrong key or index fails as surely as a changed byte.
pub(crate) fn chunk_crc(key: &[u8; 20], index: u32, data: &[u8]) -> u32 {
    let c = update(0, key);
    let c = update(c, &index.to_le_bytes());
    update(c, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(update(0, b"123456789"), 0xE306_9283);
        assert_eq!(update_soft(0, b"123456789"), 0xE306_9283);
        assert_eq!(update(0, &[0u8; 32]), 0x8A91_36AA);
        assert_eq!(update(0, b""), 0);
    }

    #[test]
    fn hardware_and_tables_agree_and_compose() {
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 7, 8, 9, 63, 64, 65, 999, 1000, 24_575, 24_576, 24_577, 49_160, 65_408, 100_000,
        ] {
            let d = &data[..len];
            assert_eq!(update(0, d), update_soft(0, d), "len {len}");
            for split in [0, len / 3, len] {
                assert_eq!(update(update(0, &d[..split]), &d[split..]), update(0, d));
            }
        }
        assert_ne!(chunk_crc(&[1; 20], 0, b"x"), chunk_crc(&[1; 20], 1, b"x"));
        assert_ne!(chunk_crc(&[1; 20], 0, b"x"), chunk_crc(&[2; 20], 0, b"x"));
    }
}
