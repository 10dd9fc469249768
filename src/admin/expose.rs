//! The snapshots of `crate::metrics`, the cache and the library manager in Prometheus' text
//! format, through `prometheus-client` (the Prometheus organisation's Rust client): a collector
//! reads the snapshots at each scrape, so the hot path keeps its own plain atomics and the
//! crate only encodes (names, escaping, `_total`, histogram `le` buckets).

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Sources;
use crate::metrics::{
    HistogramSnapshot, Op, Outcome, RecoveryCall, RecoverySnapshot, ServerSnapshot, StoreSnapshot,
};

/// The `Content-Type` of [`render`]'s output.
pub(super) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric of `sources`, in Prometheus' text format (version 0.0.4).
pub(super) fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// A registry whose one collector reads `sources` at each scrape.
pub(super) fn registry(sources: Sources) -> Registry {
    let mut r = Registry::with_prefix("blobvault");
    r.register_collector(Box::new(sources));
    r
}

impl prometheus_client::collector::Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(server) = &self.server {
            let s = server.metrics();
            encode_server(&mut e, &s)?;
            encode_store(&mut e, &s.store)?;
        } else if let Some(store) = &self.store {
            encode_store(&mut e, &store.metrics())?;
        }
        if let Some(cache) = &self.cache {
            let c = cache.stats();
            counter(
                &mut e,
                "cache_hits",
                "BlobCache requests answered from the local copy",
                c.hits,
            )?;
            counter(
                &mut e,
                "cache_misses",
                "BlobCache requests that started a download",
                c.misses,
            )?;
            counter(
                &mut e,
                "cache_shared_downloads",
                "BlobCache requests that waited for another request's download",
                c.shared,
            )?;
            counter(
                &mut e,
                "cache_downloads",
                "BlobCache downloads completed",
                c.downloads,
            )?;
            counter(
                &mut e,
                "cache_downloaded_bytes",
                "Bytes of completed BlobCache downloads",
                c.downloaded_bytes,
            )?;
            counter(
                &mut e,
                "cache_failed_attempts",
                "BlobCache download attempts that failed (each retry counts)",
                c.failed_attempts,
            )?;
            counter(
                &mut e,
                "cache_evictions",
                "Blobs the BlobCache removed to stay under its cap",
                c.evictions,
            )?;
            gauge(&mut e, "cache_blobs", "Blobs the BlobCache holds", c.blobs)?;
            gauge(&mut e, "cache_bytes", "Bytes the BlobCache holds", c.bytes)?;
        }
        if let Some(lib) = &self.library {
            let l = lib.stats();
            counter(
                &mut e,
                "library_hits",
                "Library registrations that joined a registered job (its libraries were there)",
                l.joined,
            )?;
            counter(
                &mut e,
                "library_misses",
                "First registrations of a job, which fetch its libraries",
                l.first_registrations,
            )?;
            counter(
                &mut e,
                "library_fetches",
                "Libraries fetched by first registrations",
                l.fetched,
            )?;
            counter(
                &mut e,
                "library_failed_registrations",
                "Registrations that failed to fetch a library",
                l.failed,
            )?;
            counter(
                &mut e,
                "library_evictions",
                "Libraries deleted by the clean-up once no job referenced them",
                l.removed,
            )?;
            counter(
                &mut e,
                "library_cleanups",
                "Library clean-up runs completed",
                l.cleanups,
            )?;
            gauge(
                &mut e,
                "library_jobs",
                "Jobs registered with the library manager",
                l.jobs,
            )?;
            gauge(
                &mut e,
                "library_libraries",
                "Libraries the library manager tracks",
                l.libraries,
            )?;
        }
        Ok(())
    }
}

fn encode_server(e: &mut DescriptorEncoder, s: &ServerSnapshot) -> fmt::Result {
    {
        let mut m = e.encode_descriptor(
            "requests",
            "BLOB requests finished, by op (put, get, delete) and outcome (ok, missing, error)",
            None,
            MetricType::Counter,
        )?;
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                let labels = [("op", op.as_str()), ("outcome", outcome.as_str())];
                ConstCounter::new(s.requests_of(op, outcome)).encode(m.encode_family(&labels)?)?;
            }
        }
    }
    {
        let mut m = e.encode_descriptor(
            "request_duration_seconds",
            "BLOB request durations, from the request's first byte to its reply's last, by op",
            None,
            MetricType::Histogram,
        )?;
        for op in Op::ALL {
            let labels = [("op", op.as_str())];
            let h = s.duration_of(op);
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum,
                h.count,
                &per_bucket(h),
                None,
            )?;
        }
    }
    counter(
        e,
        "received_bytes",
        "Bytes read from BLOB connections",
        s.bytes_received,
    )?;
    counter(
        e,
        "sent_bytes",
        "Bytes written to BLOB connections",
        s.bytes_sent,
    )?;
    gauge(
        e,
        "connections_open",
        "BLOB connections open",
        s.connections_open,
    )?;
    counter(
        e,
        "connections_accepted",
        "BLOB connections accepted",
        s.connections_accepted,
    )?;
    counter(
        e,
        "connections_refused",
        "BLOB connections refused (over --max-connections, or out of descriptors)",
        s.connections_refused,
    )?;
    if let (Some(q), Some(max)) = (s.listen_queue, s.listen_queue_max) {
        gauge(
            e,
            "listen_queue",
            "Connections waiting in the BLOB port's listen backlog, not yet accepted",
            q,
        )?;
        gauge(
            e,
            "listen_queue_max",
            "The BLOB port's listen backlog as the kernel applies it",
            max,
        )?;
    }
    gauge(e, "workers", "Worker threads", s.workers)?;
    gauge(
        e,
        "workers_busy",
        "Workers handling connections (not waiting for readiness)",
        s.workers_busy,
    )?;
    counter(
        e,
        "damaged_reads",
        "GETs refused or cut short because a stored chunk was damaged",
        s.damaged_reads,
    )
}

fn encode_store(e: &mut DescriptorEncoder, s: &StoreSnapshot) -> fmt::Result {
    if s.counted {
        gauge(e, "store_contents", "Distinct contents stored", s.contents)?;
        gauge(
            e,
            "store_content_blobs",
            "Blobs reachable by key (stored by a content PUT)",
            s.content_blobs,
        )?;
        gauge(e, "store_named_blobs", "Named blobs stored", s.named_blobs)?;
        gauge(
            e,
            "store_payload_bytes",
            "Bytes of distinct content stored",
            s.payload_bytes,
        )?;
    }
    gauge(
        e,
        "store_file_bytes",
        "Size of the store's database file",
        s.file_bytes,
    )?;
    gauge(
        e,
        "store_out_of_space",
        "1 while the store is out of space (PUTs refused but after a DELETE freed pages) until the disk has room for its reserve again",
        s.out_of_space as u64,
    )?;
    histogram(
        e,
        "commit_batch_ops",
        "Operations per group commit",
        MetricType::Histogram,
        &s.batch_ops,
    )?;
    histogram(
        e,
        "commit_duration_seconds",
        "Group commit durations (apply, sync, commit)",
        MetricType::Histogram,
        &s.commit_seconds,
    )?;
    counter(
        e,
        "wal_written_bytes",
        "Bytes appended to the write-ahead log",
        s.wal_bytes_written,
    )?;
    counter(
        e,
        "wal_checkpoints",
        "Checkpoints of the write-ahead log into the database",
        s.wal_checkpoints,
    )?;
    gauge(
        e,
        "wal_bytes",
        "Bytes in the write-ahead log now",
        s.wal_bytes,
    )?;
    let by_call = |v: fn(&RecoverySnapshot) -> u64| {
        RecoveryCall::ALL.map(|c| (c.as_str(), v(s.recovery_of(c))))
    };
    counters_by(
        e,
        "recovery_calls",
        "Calls to the recovery store, by call",
        "call",
        by_call(|r| r.calls),
    )?;
    counters_by(
        e,
        "recovery_errors",
        "Calls to the recovery store that failed, by call",
        "call",
        by_call(|r| r.errors),
    )?;
    {
        let mut m = e.encode_descriptor(
            "recovery_duration_seconds",
            "Durations of calls to the recovery store, by call",
            None,
            MetricType::Histogram,
        )?;
        for c in RecoveryCall::ALL {
            let labels = [("call", c.as_str())];
            let h = &s.recovery_of(c).seconds;
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum,
                h.count,
                &per_bucket(h),
                None,
            )?;
        }
    }
    counter(
        e,
        "read_repairs",
        "Blobs missing locally restored from the recovery store",
        s.read_repairs,
    )?;
    counter(
        e,
        "damaged_chunks",
        "Damaged chunks found (by GETs and by verify)",
        s.damaged_chunks,
    )
}

/// A counter family with one label: a value for each label value.
fn counters_by<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    t: MetricType,
    h: &HistogramSnapshot,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, t)?;
    m.encode_histogram::<NoLabelSet>(h.sum, h.count, &per_bucket(h), None)
}

/// The encoder takes each bucket's own count and sums them itself; snapshots are cumulative.
fn per_bucket(h: &HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut below = 0;
    h.buckets
        .iter()
        .map(|&(bound, cumulative)| {
            let own = cumulative.saturating_sub(below);
            below = cumulative;
            (bound, own)
        })
        .collect()
}
