//! blobvault: Flink 0.10's BLOB service (server, client, worker cache, library-cache manager,
//! recovery) over one embedded redb database instead of a file per blob.
//!
//! ```
//! use blobvault::config::ServerConfig;
//! use blobvault::{BlobClient, BlobId, BlobServer, BlobStore, DeleteTarget, JobId};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // Embedded: the store itself, no TCP.
//! let store = BlobStore::open(dir.path())?;
//! let key = store.put(b"jar bytes")?; // durable when it returns
//! let job = JobId::random();
//! store.put_named(job, "lib/app.jar", b"jar bytes")?; // same bytes: stored once
//! assert_eq!(store.stats()?.contents, 1);
//!
//! // Served over Flink 0.10's protocol.
//! let server = BlobServer::start(store, ServerConfig::default())?;
//! let mut client = BlobClient::connect(server.local_addr())?;
//! assert_eq!(client.get_bytes(&BlobId::Named(job, "lib/app.jar".into()))?, b"jar bytes");
//! client.delete(key)?; // the named blob keeps the bytes
//! assert!(server.store().contains(&BlobId::Named(job, "lib/app.jar".into()))?);
//! server.store().delete(DeleteTarget::Job(job))?;
//! assert_eq!(server.store().stats()?.contents, 0);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod cache;
/// The `blobvault` command line (`src/main.rs` calls [`cli::main`]). Not part of the library's
/// API: it may change in any release.
#[doc(hidden)]
pub mod cli;
pub mod client;
pub mod config;
mod fsutil;
mod json;
pub mod key;
pub mod library;
/// `blobvault bench`, the load generator (also used by `benches/`). Not part of the library's
/// API: it may change in any release.
#[doc(hidden)]
pub mod loadgen;
pub mod metrics;
pub mod protocol;
pub mod recovery;
pub mod server;
pub mod store;
pub mod tls;

pub use cache::{BlobCache, CacheError, CacheOptions, CachedBlob};
pub use client::{BlobClient, ClientError};
pub use key::{BlobId, BlobKey, JobId, KeyError, KeyHasher, MAX_NAME_LEN};
pub use library::{
    BlobService, ExecutionAttemptId, LibraryCacheManager, LibraryError, LibraryStats,
    StoreBlobService,
};
pub use protocol::{DeleteTarget, PutTarget};
pub use server::BlobServer;
pub use store::{BlobStore, StoreError, StoreOptions};

/// The README's Rust examples, compiled and run as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
