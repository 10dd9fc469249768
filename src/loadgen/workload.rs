//! What a run sends: blob sizes (one fixed size or the JAR-like mix) and their content, both
//! deterministic for a seed so that runs and benchmarks can be repeated.

use std::str::FromStr;

/// Blob sizes of a run: one fixed size, or the JAR-like mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// Every blob this many bytes.
    Fixed(u64),
    /// Most blobs 2–200 KiB, some up to 1 MiB, a few 1–8 MiB (see [`jar_mix_size`]).
    JarMix,
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jar" | "mix" | "jar-mix" => Ok(SizeSpec::JarMix),
            _ => parse_size(s).map(SizeSpec::Fixed),
        }
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeSpec::JarMix => f.write_str("jar-mix"),
            SizeSpec::Fixed(n) => f.write_str(&format_size(*n)),
        }
    }
}

impl SizeSpec {
    /// Size of operation `i` of a run seeded with `seed`.
    pub fn size_of(&self, seed: u64, i: u64) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::JarMix => jar_mix_size(seed, i),
        }
    }
}

/// Parses `4096`, `4k`, `4KiB`, `1M`, `256MiB`, `1g` (K, M, G are binary: KiB, MiB, GiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4KiB, 1MiB, or jar)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `4096` → `4KiB`, `1048576` → `1MiB`, `1500` → `1500B`.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// SplitMix64: a small, fast, well-mixed generator for sizes and content.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`: the same seed gives the same sequence.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of operation `i` of a run seeded with `seed`.
    pub fn for_op(seed: u64, i: u64) -> Rng {
        let mut r = Rng(seed ^ i.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    /// The next value, uniform over all `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `buf` with pseudo-random bytes (incompressible, distinct per seed).
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// The JAR-like size mix ("many small JARs"): 94% log-uniform in 2–200 KiB, 5% in 200 KiB–1 MiB,
/// 1% in 1–8 MiB. Mean about 100 KiB; deterministic for `(seed, i)`.
pub fn jar_mix_size(seed: u64, i: u64) -> u64 {
    let mut r = Rng::for_op(seed ^ 0x5EED_0F51_2200_0001, i);
    let pick = r.next_f64();
    let (lo, hi): (f64, f64) = if pick < 0.94 {
        (2.0 * 1024.0, 200.0 * 1024.0)
    } else if pick < 0.99 {
        (200.0 * 1024.0, 1024.0 * 1024.0)
    } else {
        (1024.0 * 1024.0, 8.0 * 1024.0 * 1024.0)
    };
    let x: f64 = lo * (hi / lo).powf(r.next_f64());
    x as u64
}

/// The content of blob `i` of a run: `len` pseudo-random bytes.
pub fn blob_bytes(seed: u64, i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::for_op(seed, i).fill(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("").is_err());
        assert_eq!("jar".parse::<SizeSpec>(), Ok(SizeSpec::JarMix));
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn jar_mix_is_mostly_small() {
        let sizes: Vec<u64> = (0..10_000).map(|i| jar_mix_size(7, i)).collect();
        let small = sizes
            .iter()
            .filter(|&&s| (2048..=200 * 1024).contains(&s))
            .count();
        assert!(small > 9_000, "{small}");
        assert!(sizes.iter().all(|&s| (2048..=8 << 20).contains(&s)));
        assert!(sizes.iter().any(|&s| s > 1 << 20));
        assert_eq!(jar_mix_size(7, 3), jar_mix_size(7, 3));
    }
}
