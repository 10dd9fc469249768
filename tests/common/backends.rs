//! The recovery backends the recovery suite runs against: the redb file and the object store (on
//! the SeaweedFS of [`super::seaweed`]). A test written once as `fn name(b: Backend)` runs on
//! both through [`both_backends!`](crate::both_backends).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blobvault::recovery::{
    ObjectRecoveryStore, ObjectStoreConfig, ObjectStoreSettings, RecoveryStore, RedbRecoveryStore,
};

use super::seaweed::{self, Seaweed};

/// Which recovery backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `<dir>/blob/recovery.redb`.
    RedbFile,
    /// A bucket of the shared SeaweedFS.
    ObjectStore,
}

/// A recovery store for one test, and how a `blobvault` process reaches it.
pub struct Recovery {
    /// The store, opened in this process.
    pub store: Arc<dyn RecoveryStore>,
    /// What `--recovery-dir` takes.
    pub uri: String,
    /// The environment a `blobvault` process needs for it.
    pub env: Vec<(String, String)>,
    /// The SeaweedFS holding it (object store only).
    pub seaweed: Option<&'static Seaweed>,
    /// Its bucket (object store only).
    pub bucket: String,
}

impl Recovery {
    /// [`env`](Self::env) as the process helpers take it.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Opens the same store again (as another server would).
    pub fn reopen(&self) -> Arc<dyn RecoveryStore> {
        match &self.seaweed {
            None => RedbRecoveryStore::open(Path::new(&self.uri)).unwrap(),
            Some(sw) => Arc::new(
                ObjectRecoveryStore::open(&object_config(sw, &self.uri, fast_settings())).unwrap(),
            ),
        }
    }

    /// Objects in the bucket under `prefix` (object store only).
    pub fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let sw = self.seaweed.expect("an object-store backend");
        sw.objects(&self.bucket, prefix)
    }
}

/// Settings for tests: a short PUT bound, so that a garbage collection (which waits twice as
/// long) takes seconds; no grace period.
pub fn fast_settings() -> ObjectStoreSettings {
    ObjectStoreSettings {
        timeout: Duration::from_secs(4),
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        gc_grace: Duration::ZERO,
        ..ObjectStoreSettings::default()
    }
}

/// The configuration reaching `uri` on `sw`, given explicitly (tests run in parallel threads:
/// no environment changes).
pub fn object_config(sw: &Seaweed, uri: &str, settings: ObjectStoreSettings) -> ObjectStoreConfig {
    ObjectStoreConfig {
        uri: uri.to_owned(),
        endpoint: Some(sw.endpoint()),
        access_key: Some(seaweed::ACCESS_KEY.to_owned()),
        secret_key: Some(seaweed::SECRET_KEY.to_owned()),
        region: Some(seaweed::REGION.to_owned()),
        allow_http: true,
        path_style: None,
        settings,
    }
}

impl Backend {
    /// A fresh, empty recovery store for `test` (under `tmp` for the redb file); `None` when the
    /// object store is needed and SeaweedFS is missing outside CI (the harness says so loudly;
    /// in CI it panics instead).
    pub fn open(self, tmp: &Path, test: &str) -> Option<Recovery> {
        match self {
            Backend::RedbFile => {
                let dir = tmp.join("recovery");
                Some(Recovery {
                    store: RedbRecoveryStore::open(&dir).unwrap(),
                    uri: dir.to_str().unwrap().to_owned(),
                    env: Vec::new(),
                    seaweed: None,
                    bucket: String::new(),
                })
            }
            Backend::ObjectStore => {
                let sw = Seaweed::shared(test)?;
                let bucket = sw.new_bucket("rec");
                let uri = sw.uri(&bucket, "ha");
                let store =
                    ObjectRecoveryStore::open(&object_config(sw, &uri, fast_settings())).unwrap();
                let mut env: Vec<(String, String)> = sw
                    .env()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                env.push(("RUST_LOG".into(), "warn".into()));
                Some(Recovery {
                    store: Arc::new(store),
                    uri,
                    env,
                    seaweed: Some(sw),
                    bucket,
                })
            }
        }
    }
}

/// Runs each `fn name(b: Backend)` listed as a test per backend: `redb_file::name` and
/// `object_store::name`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb_file {
            $(#[test]
            fn $name() {
                super::$name(super::common::backends::Backend::RedbFile)
            })*
        }
        mod object_store {
            $(#[test]
            fn $name() {
                super::$name(super::common::backends::Backend::ObjectStore)
            })*
        }
    };
}
