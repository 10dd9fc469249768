//! Object-store recovery against a real SeaweedFS (tests/common/seaweed.rs): the harness itself
//! first, then `blobvault` processes recovering through an S3 bucket.

mod common;
use common::seaweed::{Seaweed, http_get};

/// The shared single node: a bucket of one's own, fsync on, objects listed through the filer.
#[test]
fn harness_single_node_bucket() {
    let Some(sw) = Seaweed::shared("harness_single_node_bucket") else {
        return;
    };
    let bucket = sw.new_bucket("harness");
    assert!(sw.objects(&bucket, "").is_empty());
    sw.filer_put(&bucket, "p/a/1", b"one");
    sw.filer_put(&bucket, "p/b/2", b"two!");
    sw.filer_put(&bucket, "q/3", b"3");
    assert_eq!(
        sw.objects(&bucket, "p/"),
        vec![("p/a/1".to_string(), 3), ("p/b/2".to_string(), 4)]
    );
    assert_eq!(sw.filer_get(&bucket, "q/3").as_deref(), Some(&b"3"[..]));
    assert_eq!(sw.filer_get(&bucket, "q/none"), None);
    let other = sw.new_bucket("harness");
    assert_ne!(bucket, other);
    assert!(sw.objects(&other, "").is_empty());
}

/// The gateway stops (connections refused) and comes back on the same port.
#[test]
fn harness_gateway_stop_and_restart() {
    let Some(sw) = Seaweed::single("harness_gateway_stop_and_restart") else {
        return;
    };
    let s3 = format!("127.0.0.1:{}", sw.s3_port());
    assert!(http_get(&s3, "/").is_ok());
    sw.stop_gateway();
    let err = http_get(&s3, "/").expect_err("gateway stopped");
    assert!(err.contains("connect"), "{err}");
    sw.restart_gateway();
    let (_, body) = http_get(&s3, "/").expect("gateway back");
    assert!(body.contains("<Error>"), "{body}");
}

/// Three volume servers: every object has copies on two, and survives one being killed.
#[test]
fn harness_cluster_replicates() {
    let Some(sw) = Seaweed::cluster("harness_cluster_replicates") else {
        return;
    };
    assert_eq!(sw.data_nodes().unwrap().len(), 3);
    let bucket = sw.new_bucket("cluster");
    let blobs: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            (
                format!("o/{i}"),
                common::Rng::new(i).bytes(1000 + 3000 * i as usize),
            )
        })
        .collect();
    for (k, v) in &blobs {
        sw.filer_put(&bucket, k, v);
    }
    assert!(sw.assert_replicated(&bucket, 2) >= 1);
    sw.kill_volume(0);
    for (k, v) in &blobs {
        assert_eq!(sw.filer_get(&bucket, k).as_ref(), Some(v), "{k}");
    }
}
