//! The object store's own PUT rate, the baseline beside which `blobvault bench` with object-store
//! recovery is reported (BENCHMARKS.md): `C` concurrent clients each putting its share of `N`
//! objects of `SIZE` bytes, one at a time (as a blobvault connection waits for its ack), through
//! the same client blobvault uses (object_store; multipart in 8 MiB parts from 8 MiB up).
//!
//! ```sh
//! AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=… \
//! AWS_SECRET_ACCESS_KEY=… AWS_REGION=us-east-1 \
//!   cargo run --release --example s3_put_rate -- s3://bucket/rate 4000 4096 8
//! ```

use std::sync::Arc;
use std::time::Instant;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, n, size, c] = args.as_slice() else {
        eprintln!(
            "usage: s3_put_rate s3://BUCKET/PREFIX COUNT SIZE CONCURRENCY (endpoint and credentials from AWS_*)"
        );
        std::process::exit(2);
    };
    let (n, size, c): (usize, usize, usize) = (n.parse()?, size.parse()?, c.parse()?);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            .with_url(uri.as_str())
            .build()?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..c)
            .map(|t| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for i in 0..n / c {
                        let mut data = vec![0u8; size];
                        let tag = ((t as u128) << 64 | i as u128).to_le_bytes();
                        let k = tag.len().min(size);
                        data[..k].copy_from_slice(&tag[..k]);
                        let path = Path::from(format!("rate/{t}/{i}"));
                        if size >= 8 << 20 {
                            let up = store.put_multipart(&path).await?;
                            let mut w = WriteMultipart::new_with_chunk_size(up, 8 << 20);
                            w.write(&data);
                            w.finish().await?;
                        } else {
                            store.put(&path, PutPayload::from(data)).await?;
                        }
                    }
                    Ok::<_, object_store::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let done = n / c * c;
    println!(
        "{done} PUTs of {size} B, {c} concurrent: {:.0} PUT/s, {:.1} MB/s",
        done as f64 / secs,
        (done * size) as f64 / secs / 1e6
    );
    Ok(())
}
