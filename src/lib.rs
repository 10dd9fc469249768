//! blobvault: Flink 0.10's BLOB service (server, client, worker cache, library-cache manager,
//! recovery) over one embedded redb database instead of a file per blob.

pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod key;
pub mod library;
pub mod loadgen;
pub mod protocol;
pub mod recovery;
pub mod server;
pub mod store;

pub use cache::{BlobCache, CacheError, CacheOptions, CachedBlob};
pub use client::{BlobClient, ClientError};
pub use key::{BlobId, BlobKey, JobId, KeyError, KeyHasher, MAX_NAME_LEN};
pub use library::{
    BlobService, ExecutionAttemptId, LibraryCacheManager, LibraryError, StoreBlobService,
};
pub use protocol::{DeleteTarget, PutTarget};
pub use server::BlobServer;
pub use store::{BlobStore, StoreError, StoreOptions};
