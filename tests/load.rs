//! Load: many connections of mixed operations, with bounded server threads. (Alone in its test
//! binary, so the thread count is this server's.)

use std::time::Duration;

use blobvault::config::{Deadlines, ServerConfig};
use blobvault::{BlobClient, BlobId, JobId};

mod common;
use common::TestServer;

fn server(workers: usize, read_timeout: Duration) -> TestServer {
    TestServer::start_config(ServerConfig {
        num_concurrent: workers,
        deadlines: Deadlines {
            idle: read_timeout,
            header: read_timeout,
            stall: read_timeout,
            ..Deadlines::default()
        },
        ..ServerConfig::default()
    })
}

/// Threads of this process whose name starts with `prefix` (Linux truncates names to 15 bytes).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with(prefix))
        .count()
}

#[test]
fn many_connections_of_mixed_operations() {
    let srv = server(16, Duration::from_secs(30));
    let addr = srv.addr();
    let job = JobId::random();
    let max_workers = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..256usize {
            let max_workers = &max_workers;
            s.spawn(move || {
                let mut c = BlobClient::connect(addr).unwrap();
                for i in 0..12usize {
                    let data = vec![(t * 31 + i) as u8; 100 + (t * 97 + i * 1013) % 50_000];
                    match i % 4 {
                        0 | 1 => {
                            let k = c.put(&data).unwrap();
                            assert_eq!(c.get_bytes(&BlobId::Content(k)).unwrap(), data);
                        }
                        2 => {
                            let name = format!("t{t}-{i}");
                            c.put_named(job, &name, &data).unwrap();
                            assert_eq!(
                                c.get_bytes(&BlobId::Named(job, name.clone())).unwrap(),
                                data
                            );
                            c.delete_named(job, &name).unwrap();
                        }
                        _ => {
                            let k = c.put(&data).unwrap();
                            c.delete(k).unwrap();
                        }
                    }
                    max_workers.fetch_max(
                        threads_named("blobvault-worke"),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            });
        }
    });
    let seen = max_workers.into_inner();
    assert!(seen <= 16, "{seen} worker threads for a pool of 16");
    assert_eq!(threads_named("blobvault-worke"), 16);
    let report = srv.store().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
}
