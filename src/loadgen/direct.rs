//! `--object-store URI`: the put phase's blobs (same sizes, same content, same number of
//! connections) PUT straight into an object store with `object_store`, no blobvault in between:
//! the store's own rate, measured in the same run, to set the object-store recovery figures
//! against. Endpoint and credentials come from the environment, as for `--recovery-dir s3://`
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP=true`; path-style requests).
//!
//! Each of the N threads PUTs its share one after the other, as a blobvault connection does.
//! A blob larger than [`PART`] goes up as a multipart upload of [`PART`]-sized parts with up to
//! [`PARTS_IN_FLIGHT`] at once (what a good client does). The objects go under
//! `<prefix>/bench-<seed>/` and are deleted after the phase.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};

use super::{PhaseReport, Progress, Rng, timed};

/// Part size of a multipart upload (and the largest blob sent in one PUT).
pub const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 8;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// PUTs blob `i` (size `sizes[i]`, bytes from `Rng::for_op(seed, i)`) for every `i` into `uri`
/// over `conns` threads; returns the phase `store-put`, or `store-create` when `create` asks
/// for the recovery backend's kind of write (see [`put_one`]).
pub(super) fn store_put(
    uri: &str,
    sizes: &[u64],
    seed: u64,
    conns: usize,
    create: bool,
    progress: &Progress,
) -> Result<PhaseReport, Box<dyn std::error::Error>> {
    let phase = if create { "store-create" } else { "store-put" };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = url::Url::parse(uri).map_err(|e| format!("--object-store {uri:?}: {e}"))?;
    if url.scheme() != "s3" {
        return Err(format!("--object-store {uri:?}: only s3:// URIs are measured").into());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            .with_url(uri)
            .build()
            .map_err(|e| format!("--object-store {uri}: {e}"))?,
    );
    let prefix = ObjPath::from(url.path().trim_matches('/')).join(format!("bench-{seed}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let jobs: Vec<_> = (0..conns)
        .map(|c| {
            let (store, prefix, rt) = (Arc::clone(&store), prefix.clone(), &rt);
            move |start: &std::sync::Barrier| {
                start.wait();
                let mut lat = Vec::new();
                let mut bytes = 0u64;
                let mut first_error = None;
                for i in (c..sizes.len()).step_by(conns) {
                    let size = sizes[i] as usize;
                    let path = prefix.clone().join(i.to_string());
                    let t = Instant::now();
                    let rng = Rng::for_op(seed, i as u64);
                    let r = rt.block_on(put_one(&*store, &path, size, rng, create));
                    match r {
                        Ok(()) => {
                            lat.push(t.elapsed().as_nanos() as u64);
                            bytes += size as u64;
                            progress.add(size as u64);
                        }
                        Err(e) => {
                            first_error.get_or_insert_with(|| format!("{phase} #{i}: {e}"));
                        }
                    }
                }
                (lat, bytes, first_error)
            }
        })
        .collect();
    let (results, seconds, _) = timed(phase, sizes.len() as u64, progress, None, jobs);
    let mut lat: Vec<u64> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let latency_us = super::percentiles(&mut lat);
    let report = PhaseReport {
        name: phase.into(),
        ops: lat.len() as u64,
        errors: sizes.len() as u64 - lat.len() as u64,
        bytes: results.iter().map(|r| r.1).sum(),
        seconds,
        latency_us,
        first_error: results.iter().find_map(|r| r.2.clone()),
        // The object store's CPU is not ours to measure.
        server_cpu_ns: None,
    };
    // Clean up what the phase wrote (not timed).
    rt.block_on(async {
        let paths = store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
        store.delete_stream(paths).try_collect::<Vec<_>>().await
    })
    .map_err(|e| format!("--object-store {uri}: deleting {prefix}: {e}"))?;
    Ok(report)
}

/// One blob: a single PUT up to [`PART`] bytes, else a multipart upload. The bytes are
/// generated as they go, as the blobvault client does. With `create`, a single PUT is
/// create-only with the metadata `origin` and `creation`, as the recovery backend writes content
/// put by key (`recovery/object.rs`): what that costs the store beyond a plain PUT.
async fn put_one(
    store: &dyn ObjectStore,
    path: &ObjPath,
    size: usize,
    mut rng: Rng,
    create: bool,
) -> Result<(), BoxError> {
    if size <= PART {
        let mut buf = vec![0u8; size];
        rng.fill(&mut buf);
        let mut opts = PutOptions::default();
        if create {
            opts.mode = PutMode::Create;
            opts.attributes = Attributes::from_iter([
                (Attribute::Metadata("origin".into()), "key".to_owned()),
                (
                    Attribute::Metadata("creation".into()),
                    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                ),
            ]);
        }
        store.put_opts(path, PutPayload::from(buf), opts).await?;
        return Ok(());
    }
    let upload = store.put_multipart(path).await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut left = size;
    while left > 0 {
        let n = left.min(PART);
        let mut buf = vec![0u8; n];
        rng.fill(&mut buf);
        w.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        w.put(Bytes::from(buf));
        left -= n;
    }
    w.finish().await?;
    Ok(())
}
