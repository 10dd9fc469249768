//! The figures of a run and their formatting: the text report, the side-by-side comparison of
//! `--compare`, and JSON (`--json`).

use std::fmt::Write as _;

use crate::json::json_str;

/// Figures of one phase.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// `put`, `get` or `delete`.
    pub name: String,
    /// Operations that succeeded (in a get phase, over every round).
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Blob bytes the successful operations moved (0 in a delete phase).
    pub bytes: u64,
    /// Wall-clock time of the phase, from the moment every connection is open until the last
    /// one is done.
    pub seconds: f64,
    /// Latency percentiles in microseconds: p50, p99, p999, max.
    pub latency_us: [f64; 4],
    /// Message of the first failure, if any.
    pub first_error: Option<String>,
    /// CPU time (user + system) the server spent over the phase, in nanoseconds: the in-process
    /// server's threads, or the `--server-pid` process; `None` when not measured.
    pub server_cpu_ns: Option<u64>,
}

impl PhaseReport {
    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    /// Bytes per second, in MB (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// The server's CPU time per successful operation, in microseconds.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        let ns = self.server_cpu_ns?;
        (self.ops > 0).then(|| ns as f64 / 1e3 / self.ops as f64)
    }
}

/// Size of the store against what it holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreBytes {
    /// Length of the database file. redb grows it by doubling (up to 4 GiB regions), so this
    /// jumps by 2x at thresholds; the part not yet used is sparse.
    pub file: u64,
    /// Blocks the database file occupies on disk.
    pub disk: u64,
    /// Bytes of distinct content stored.
    pub payload: u64,
}

/// The whole report of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What served: `blobvault`, `files` or `files-fsync` (in-process), or `external`.
    pub target: String,
    /// Address the load went to (the in-process server's, when one was started).
    pub server: String,
    /// Whether the server ran in this process.
    pub in_process: bool,
    /// Whether the in-process server made every write durable before replying; `None` for an
    /// external server.
    pub durable: Option<bool>,
    /// The `--size` given, as text (`4KiB`, `jar-mix`).
    pub size: String,
    /// Blobs per phase.
    pub count: u64,
    /// Parallel connections.
    pub connections: usize,
    /// Whether blobs were named (`--named`) rather than content-addressed.
    pub named: bool,
    /// Whether requests were written the way Flink's Java client writes them (`--java-client`).
    pub java_client: bool,
    /// One report per phase, in the order run.
    pub phases: Vec<PhaseReport>,
    /// `--dd`: MB/s (10^6 bytes) of `dd … conv=fdatasync` into the store directory.
    pub dd_mb_per_sec: Option<f64>,
    /// `--sha1`: MB/s of SHA-1 over the put phase's bytes on one core.
    pub sha1_mb_per_sec: Option<f64>,
    /// Peak RSS (VmHWM) in bytes of `--server-pid`, else of this process when the in-process
    /// blobvault server ran in it; `None` otherwise.
    pub peak_rss_bytes: Option<u64>,
    /// Figures of the store after the put phase (in-process server).
    pub store_bytes: Option<StoreBytes>,
    /// `--reopen`: milliseconds to open the store again after a clean stop.
    pub reopen_ms: Option<f64>,
}

/// Ops/s of `b` against `a`, phase by phase.
pub(super) fn format_comparison(a: &Report, b: &Report) -> String {
    let mut s = format!("\n{} vs {} (ops/s ratio):\n", a.target, b.target);
    for pa in &a.phases {
        if let Some(pb) = b.phases.iter().find(|p| p.name == pa.name) {
            let _ = writeln!(
                s,
                "  {:<8} {:>10.0} vs {:>10.0}  = {:.2}x",
                pa.name,
                pa.ops_per_sec(),
                pb.ops_per_sec(),
                pa.ops_per_sec() / pb.ops_per_sec().max(1e-9)
            );
        }
    }
    s
}

/// The human-readable report.
pub fn format_text(r: &Report) -> String {
    let mut s = String::new();
    let mode = match (r.in_process, r.durable) {
        (true, Some(true)) => "in-process server, durable (fsync)",
        (true, _) => "in-process server, no fsync",
        _ => "external server",
    };
    let _ = writeln!(
        s,
        "[{}] {} {}, {} connection(s), size {}, {}{}",
        r.target,
        r.count,
        if r.named { "named blobs" } else { "blobs" },
        r.connections,
        r.size,
        mode,
        if r.java_client {
            ", Java-style client (small writes, Nagle on)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "server {}", r.server);
    let _ = writeln!(
        s,
        "{:<12} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>12}",
        "phase",
        "ops",
        "ops/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "errors",
        "srv cpu µs/op"
    );
    for p in &r.phases {
        let cpu = p
            .cpu_us_per_op()
            .map_or_else(|| "-".to_string(), |us| format!("{us:.2}"));
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>11.0} {:>10.1} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7} {:>12}",
            p.name,
            p.ops,
            p.ops_per_sec(),
            p.mb_per_sec(),
            p.latency_us[0] / 1e3,
            p.latency_us[1] / 1e3,
            p.latency_us[2] / 1e3,
            p.latency_us[3] / 1e3,
            p.errors,
            cpu
        );
        if let Some(e) = &p.first_error {
            let _ = writeln!(s, "          first error: {e}");
        }
    }
    for (name, server_us, floor_us) in floor_ratios(r) {
        let _ = writeln!(
            s,
            "{name} server CPU per request / raw-TCP floor: {server_us:.2} / {floor_us:.2} µs = {:.2}x",
            server_us / floor_us.max(1e-9)
        );
    }
    if let Some(h) = r.sha1_mb_per_sec {
        let _ = writeln!(s, "SHA-1 on one core: {h:.1} MB/s");
        if let Some(p) = r.phases.iter().find(|p| p.name == "put") {
            let _ = writeln!(s, "  put / SHA-1: {:.0}%", 100.0 * p.mb_per_sec() / h);
        }
    }
    if let Some(d) = r.dd_mb_per_sec {
        let _ = writeln!(s, "dd conv=fdatasync: {d:.1} MB/s");
        if let Some(p) = r.phases.iter().find(|p| p.name == "put") {
            let _ = writeln!(s, "  put / dd: {:.0}%", 100.0 * p.mb_per_sec() / d);
        }
    }
    let raw_down = r.phases.iter().find(|p| p.name == "raw-down");
    if let (Some(raw), Some(get)) = (raw_down, r.phases.iter().find(|p| p.name == "get")) {
        let _ = writeln!(
            s,
            "get / raw-down: {:.0}%",
            100.0 * get.mb_per_sec() / raw.mb_per_sec().max(1e-9)
        );
        if let (Some(g), Some(w)) = (cpu_ns_per_kb(get), cpu_ns_per_kb(raw)) {
            let _ = writeln!(
                s,
                "server CPU per KB sent: get {g:.1} ns, raw-down {w:.1} ns = {:.2}x",
                g / w.max(1e-9)
            );
        }
    }
    if let Some(b) = r.store_bytes {
        let p = b.payload.max(1) as f64;
        let _ = writeln!(
            s,
            "store after put: payload {} bytes; on disk {} bytes ({:.3}x); file length {} bytes ({:.3}x)",
            b.payload,
            b.disk,
            b.disk as f64 / p,
            b.file,
            b.file as f64 / p
        );
    }
    if let Some(rss) = r.peak_rss_bytes {
        let _ = writeln!(s, "peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    if let Some(ms) = r.reopen_ms {
        let _ = writeln!(s, "reopen after clean stop: {ms:.1} ms");
    }
    s
}

/// The server's CPU nanoseconds per 1,000 bytes a phase moved.
fn cpu_ns_per_kb(p: &PhaseReport) -> Option<f64> {
    let ns = p.server_cpu_ns?;
    (p.bytes > 0).then(|| ns as f64 * 1e3 / p.bytes as f64)
}

/// For each phase with a `floor-<phase>` beside it and CPU figures for both: the phase's name,
/// its server CPU per request and the floor's, in microseconds.
pub fn floor_ratios(r: &Report) -> Vec<(&str, f64, f64)> {
    r.phases
        .iter()
        .filter_map(|p| {
            let floor = r
                .phases
                .iter()
                .find(|f| f.name == format!("floor-{}", p.name))?;
            Some((p.name.as_str(), p.cpu_us_per_op()?, floor.cpu_us_per_op()?))
        })
        .collect()
}

/// A JSON number (non-finite values become `null`).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// The report as one JSON object (hand-written: no serde).
pub fn format_json(r: &Report) -> String {
    let mut s = String::from("{");
    let _ = write!(
        s,
        "\"target\":{},\"server\":{},\"in_process\":{},\"durable\":{},\"size\":{},\"count\":{},\"connections\":{},\"named\":{},\"java_client\":{},\"phases\":[",
        json_str(&r.target),
        json_str(&r.server),
        r.in_process,
        r.durable.map_or("null".into(), |d| d.to_string()),
        json_str(&r.size),
        r.count,
        r.connections,
        r.named,
        r.java_client
    );
    for (i, p) in r.phases.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"name\":{},\"ops\":{},\"errors\":{},\"bytes\":{},\"seconds\":{},\"ops_per_sec\":{},\"mb_per_sec\":{},\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            json_str(&p.name),
            p.ops,
            p.errors,
            p.bytes,
            json_num(p.seconds),
            json_num(p.ops_per_sec()),
            json_num(p.mb_per_sec()),
            json_num(p.latency_us[0]),
            json_num(p.latency_us[1]),
            json_num(p.latency_us[2]),
            json_num(p.latency_us[3]),
        );
        let _ = write!(
            s,
            ",\"server_cpu_ns\":{},\"server_cpu_us_per_op\":{}",
            p.server_cpu_ns.map_or("null".into(), |n| n.to_string()),
            p.cpu_us_per_op().map_or("null".into(), json_num)
        );
        if let Some(e) = &p.first_error {
            let _ = write!(s, ",\"first_error\":{}", json_str(e));
        }
        s.push('}');
    }
    s.push(']');
    let ratios: Vec<String> = floor_ratios(r)
        .iter()
        .map(|(name, server, floor)| {
            format!("{}:{}", json_str(name), json_num(server / floor.max(1e-9)))
        })
        .collect();
    let _ = write!(s, ",\"cpu_vs_floor\":{{{}}}", ratios.join(","));
    let opt = |x: Option<f64>| x.map_or("null".to_string(), json_num);
    let _ = write!(
        s,
        ",\"dd_mb_per_sec\":{},\"sha1_mb_per_sec\":{},\"peak_rss_bytes\":{},\"reopen_ms\":{}",
        opt(r.dd_mb_per_sec),
        opt(r.sha1_mb_per_sec),
        r.peak_rss_bytes.map_or("null".into(), |b| b.to_string()),
        opt(r.reopen_ms)
    );
    match r.store_bytes {
        Some(b) => {
            let p = b.payload.max(1) as f64;
            let _ = write!(
                s,
                ",\"store\":{{\"file_bytes\":{},\"disk_bytes\":{},\"payload_bytes\":{},\"file_ratio\":{},\"disk_ratio\":{}}}",
                b.file,
                b.disk,
                b.payload,
                json_num(b.file as f64 / p),
                json_num(b.disk as f64 / p)
            );
        }
        None => s.push_str(",\"store\":null"),
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        assert_eq!(json_num(f64::NAN), "null");
    }
}
