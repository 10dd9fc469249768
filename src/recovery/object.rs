//! The object-store recovery backend: every write replicated to an S3 bucket (or, with the `gcs`
//! and `azure` features, a GCS bucket or an Azure container), through Apache Arrow's
//! `object_store`.
//!
//! # Layout
//!
//! Under the URI's prefix `P` (`s3://bucket/P`):
//!
//! | object | body | written |
//! | --- | --- | --- |
//! | `P/content/<sha1 hex>` | the blob's bytes | once per distinct content, create-only (`If-None-Match: *`); multipart past [`ObjectStoreSettings::part_size`] |
//! | `P/pin/<sha1 hex>` | empty | by a content PUT: the blob is reachable by its key |
//! | `P/named/<job hex>/<name>` | the content key, 40 hex digits | by a named PUT; `<name>` is base64url (no padding) of the UTF-8 name, `=` for the empty name |
//! | `P/gc/<sha1 hex>` | empty | by a garbage collection, while it may delete that content |
//!
//! Content objects are immutable: the same key means the same bytes, so a second upload of the
//! same content is refused harmlessly (412) and a retried request is safe. `pin/` and `named/`
//! objects are the references: a GET by key needs the pin, a GET by name reads the reference and
//! then the content. DELETE by key removes the pin only (a named blob with the same bytes keeps
//! them); a job delete removes every `named/<job>/` object. Content no reference names any more
//! stays until a garbage collection ([`ObjectRecoveryStore::gc`]).
//!
//! # A PUT
//!
//! One group commit is one call: the content objects of all its items go up concurrently (at most
//! [`ObjectStoreSettings::concurrency`] at a time; a large blob in parts, read from the spool
//! part by part, so memory stays bounded whatever the size), together with one listing of `gc/`
//! checking that no garbage collection has marked that content; then every reference goes up
//! concurrently. So a batch costs two round trips however many blobs it holds, and each blob two
//! object PUTs (its content, its reference) plus one listing per batch. The whole call is bounded by
//! [`ObjectStoreSettings::timeout`]: past it the PUT fails (and the local store does not apply
//! it). A failure before the references leaves no visible blob; a failure while writing them may
//! leave some of that batch's references written (the client got an error either way, as for a
//! failed local commit: README "Failure modes").
//!
//! # Garbage collection, and why it cannot race a PUT
//!
//! A pass: (1) list `content/`, keep candidates older than [`ObjectStoreSettings::gc_grace`];
//! (2) list the references, drop the candidates they name; (3) create a marker `gc/<key>` for each
//! (create-only: a marker another pass holds makes this pass skip that content); (4) wait `S`;
//! (5) list the references again, delete the content still unreferenced; (6) wait `S`; (7) delete
//! the markers. `S` is the longest a PUT may take ([`ObjectStoreSettings::timeout`], plus a
//! margin): a PUT that ran longer has failed.
//!
//! Claim: no acknowledged PUT's content is deleted while its reference exists. A PUT of content
//! `X` lists the markers at some time `h`, after it started (`s <= h`) and before it
//! acknowledged (`end <= s + S`); it acknowledges only if the marker was absent at `h`. The marker
//! exists from its creation `m` to its deletion `e`, so `h < m` or `h > e`.
//! - `h < m`: the PUT ended by `h + S < m + S`, before step 5 lists the references, so that
//!   listing sees its reference and `X` is not deleted.
//! - `h > e`: the pass deleted `X` (if at all) at some `d <= e - S`, and the PUT started at
//!   `s >= h - S > d`: its content upload (or the 412 saying `X` exists) came after the deletion.
//!
//! A PUT that finds a marker fails with [`MARKED`] in its message (content unreferenced for longer
//! than the grace period and put again while a pass collects it: rare). The argument needs the
//! listings to be strongly consistent (S3 is since 2020; SeaweedFS's filer is) and the clocks of
//! the servers to run at about the same rate (durations only are compared, with a margin).
//! A marker older than [`STALE_MARKER`] (a pass that died) is ignored by PUTs and removed by the
//! next pass; a pass stops deleting well before that age.
//!
//! # Runtime
//!
//! `object_store` is async: the backend owns a small multi-threaded tokio runtime and the
//! synchronous writer and reader threads `block_on` it. Called from inside some other tokio
//! runtime (an embedder's), the call moves to a scoped thread first: `block_on` never runs on a
//! runtime's own thread.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::key::{BlobId, BlobKey, JobId};
use crate::store::{GcReport, RecoveryError, RecoveryItem, RecoveryStore};

/// What a PUT's error says when it found a garbage collection's marker on its content.
pub const MARKED: &str = "is being garbage-collected in the recovery store";

/// Age past which a garbage collection's marker is taken as left by a pass that died.
pub const STALE_MARKER: Duration = Duration::from_secs(3600);

/// How the object-store backend is tuned; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ObjectStoreSettings {
    /// The longest one replication (a group commit's PUT) may take, retries included; past it the
    /// PUT fails. Also how long a garbage collection waits for PUTs in flight. Default 30 s
    /// (`blob.recovery.timeout`). Give `blobvault recovery gc` at least the servers' value.
    pub timeout: Duration,
    /// The longest one HTTP request may take. Default 10 s.
    pub request_timeout: Duration,
    /// The longest a connection may take to open. Default 5 s.
    pub connect_timeout: Duration,
    /// Retries of a failed request (with exponential backoff, within `timeout`). Default 3.
    pub retries: usize,
    /// Content younger than this is never collected. Default 1 h (`blob.recovery.gc.grace`).
    pub gc_grace: Duration,
    /// Blobs larger than this go up as multipart uploads of parts this large. Default 8 MiB
    /// (S3's minimum part is 5 MiB).
    pub part_size: usize,
    /// Requests in flight at once for one batch (and parts for one multipart upload: half
    /// of it, at least 2). Default 8. Memory: about `concurrency × part_size` at most.
    pub concurrency: usize,
}

impl Default for ObjectStoreSettings {
    fn default() -> Self {
        ObjectStoreSettings {
            timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            gc_grace: Duration::from_secs(3600),
            part_size: 8 * 1024 * 1024,
            concurrency: 8,
        }
    }
}

/// Where the store is and how to reach it, as the URI, the environment and Flink's keys say.
#[derive(Clone, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` (or `gs://`, `az://` with those features).
    pub uri: String,
    /// Endpoint URL (`AWS_ENDPOINT_URL` or `s3.endpoint`): an S3-compatible service. Requests are
    /// then path-style.
    pub endpoint: Option<String>,
    /// Access key (`AWS_ACCESS_KEY_ID` or `s3.access-key`).
    pub access_key: Option<String>,
    /// Secret key (`AWS_SECRET_ACCESS_KEY` or `s3.secret-key`). Never logged.
    pub secret_key: Option<String>,
    /// Region (`AWS_REGION`); `us-east-1` when an endpoint is given without one.
    pub region: Option<String>,
    /// Plain HTTP allowed (`AWS_ALLOW_HTTP=true`); otherwise an `http://` endpoint is refused.
    pub allow_http: bool,
    /// Path-style requests (`s3.path.style.access`); always on with an endpoint unless set false.
    pub path_style: Option<bool>,
    /// Tuning.
    pub settings: ObjectStoreSettings,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of every log line and error.
        f.debug_struct("ObjectStoreConfig")
            .field("uri", &self.uri)
            .field("endpoint", &self.endpoint)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("path_style", &self.path_style)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The object-store recovery backend (see the module docs for its layout and guarantees). A
/// handle: clones share one connection pool and runtime.
#[derive(Clone)]
pub struct ObjectRecoveryStore(Arc<Backend>);

/// What an [`ObjectRecoveryStore`] holds.
struct Backend {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// `s3://bucket/prefix at <endpoint>`: what every error names.
    location: String,
    settings: ObjectStoreSettings,
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ObjectRecoveryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRecoveryStore")
            .field("location", &self.0.location)
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Name segment of a named blob: base64url without padding, `=` for the empty name (`=` never
/// appears in unpadded base64).
pub fn encode_name(name: &str) -> String {
    if name.is_empty() {
        "=".to_owned()
    } else {
        URL_SAFE_NO_PAD.encode(name.as_bytes())
    }
}

/// The inverse of [`encode_name`]; `None` for a segment no name encodes to.
pub fn decode_name(segment: &str) -> Option<String> {
    if segment == "=" {
        return Some(String::new());
    }
    String::from_utf8(URL_SAFE_NO_PAD.decode(segment).ok()?).ok()
}

impl ObjectRecoveryStore {
    /// Opens the store `config` names and probes it (one listing of the prefix), so that bad
    /// credentials, a missing bucket or an unreachable endpoint fail here, naming endpoint and
    /// bucket, not at the first PUT.
    pub fn open(config: &ObjectStoreConfig) -> Result<ObjectRecoveryStore, RecoveryError> {
        // reqwest is built without a bundled TLS provider (aws-lc-rs is a slow C build): ring.
        // An error means one is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = config.endpoint.as_deref().unwrap_or("the default endpoint");
        let location = format!("{} at {endpoint}", config.uri);
        let fail = |message: String| RecoveryError::Backend {
            path: location.clone(),
            message,
        };
        let url = url::Url::parse(&config.uri)
            .map_err(|e| fail(format!("malformed URI {:?}: {e}", config.uri)))?;
        let (scheme, path) = ObjectStoreScheme::parse(&url)
            .map_err(|e| fail(format!("unsupported URI {:?}: {e}", config.uri)))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(fail(format!(
                "malformed URI {:?}: no bucket (expected s3://BUCKET/PREFIX)",
                config.uri
            )));
        }
        let s = &config.settings;
        let mut client = ClientOptions::new()
            .with_timeout(s.request_timeout)
            .with_connect_timeout(s.connect_timeout)
            .with_allow_http(config.allow_http);
        if config
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
            && !config.allow_http
        {
            return Err(fail(
                "plain-HTTP endpoint refused: set AWS_ALLOW_HTTP=true to allow it".into(),
            ));
        }
        client = client.with_pool_idle_timeout(Duration::from_secs(30));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: s.retries,
            retry_timeout: s.timeout,
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(config.uri.as_str())
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(e) = &config.endpoint {
                    b = b
                        .with_endpoint(e.as_str())
                        .with_virtual_hosted_style_request(!config.path_style.unwrap_or(true));
                    if config.region.is_none() && std::env::var_os("AWS_REGION").is_none() {
                        b = b.with_region("us-east-1");
                    }
                } else if let Some(p) = config.path_style {
                    b = b.with_virtual_hosted_style_request(!p);
                }
                if let Some(k) = &config.access_key {
                    b = b.with_access_key_id(k.as_str());
                }
                if let Some(k) = &config.secret_key {
                    b = b.with_secret_access_key(k.as_str());
                }
                if let Some(r) = &config.region {
                    b = b.with_region(r.as_str());
                }
                Arc::new(b.build().map_err(|e| fail(e.to_string()))?)
            }
            #[cfg(feature = "gcs")]
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(config.uri.as_str())
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            ),
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(config.uri.as_str())
                    .with_client_options(client)
                    .with_retry(retry)
                    .build()
                    .map_err(|e| fail(e.to_string()))?,
            ),
            other => {
                return Err(fail(format!(
                    "{other:?} URIs are not supported by this build (s3:// is; gs:// and az:// \
                     with the gcs and azure cargo features)"
                )));
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("blobvault-objstore")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start its runtime: {e}")))?;
        let this = Backend {
            store,
            prefix: path,
            location,
            settings: config.settings.clone(),
            rt: Some(rt),
        };
        this.probe()?;
        tracing::info!(location = %this.location, "recovery store open (object store)");
        Ok(ObjectRecoveryStore(Arc::new(this)))
    }

    /// Where the store is, as errors name it: `URI at ENDPOINT`.
    pub fn location(&self) -> &str {
        &self.0.location
    }

    /// Collects content no reference names (see the module docs). Takes at least twice
    /// [`ObjectStoreSettings::timeout`] when there is something to collect.
    pub fn gc(&self) -> Result<GcReport, RecoveryError> {
        self.0.gc()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its threads stop, which panics inside another runtime
        // (an embedder's): let them stop in the background (nothing of ours runs there by then).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Backend {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the backend")
    }

    fn probe(&self) -> Result<(), RecoveryError> {
        let prefix = self.prefix.clone();
        let store = Arc::clone(&self.store);
        self.run("opening it", async move {
            store.list_with_delimiter(Some(&prefix)).await.map(|_| ())
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> RecoveryError {
        // One line: S3 error bodies are XML over several.
        let text = e.to_string().replace(['\r', '\n'], " ");
        let hint = if text.contains("NoSuchBucket") {
            "; the bucket does not exist: create it"
        } else if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            || text.contains("403")
        {
            "; the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY \
             (or s3.access-key / s3.secret-key)"
        } else if text.contains("error sending request")
            || text.contains("connect")
            || text.contains("timed out")
        {
            "; the endpoint is unreachable: check AWS_ENDPOINT_URL (or s3.endpoint) and that the \
             store is up"
        } else {
            ""
        };
        RecoveryError::Backend {
            path: self.location.clone(),
            message: format!("{what}: {text}{hint}"),
        }
    }

    /// Runs `f` on the backend's runtime, bounded by the configured timeout.
    fn run<T: Send, E: std::fmt::Display + Send>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, E>> + Send,
    ) -> Result<T, RecoveryError> {
        let limit = self.settings.timeout;
        let bounded = async move { tokio::time::timeout(limit, f).await };
        let out = if tokio::runtime::Handle::try_current().is_ok() {
            // Inside some runtime's thread: block_on there would panic (or stall that runtime).
            std::thread::scope(|s| s.spawn(|| self.runtime().block_on(bounded)).join())
                .map_err(|_| self.err(what, "its thread panicked"))?
        } else {
            self.runtime().block_on(bounded)
        };
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, e)),
            Err(_) => Err(self.err(
                what,
                format!(
                    "no answer within {:?} (timed out; the endpoint is unreachable or too slow)",
                    limit
                ),
            )),
        }
    }

    fn path(&self, rest: &str) -> ObjPath {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_owned()).collect();
        parts.extend(rest.split('/').map(str::to_owned));
        ObjPath::from_iter(parts)
    }

    fn content_path(&self, key: &BlobKey) -> ObjPath {
        self.path(&format!("content/{key}"))
    }

    fn marker_path(&self, key: &BlobKey) -> ObjPath {
        self.path(&format!("gc/{key}"))
    }

    fn ref_path(&self, id: &BlobId) -> ObjPath {
        match id {
            BlobId::Content(k) => self.path(&format!("pin/{k}")),
            BlobId::Named(j, n) => self.path(&format!("named/{j}/{}", encode_name(n))),
        }
    }

    /// The key a reference names, or `None` when it is absent.
    async fn read_ref(
        store: &dyn ObjectStore,
        path: &ObjPath,
        id: &BlobId,
    ) -> Result<Option<BlobKey>, String> {
        match id {
            BlobId::Content(k) => match store.head(path).await {
                Ok(_) => Ok(Some(*k)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
            BlobId::Named(..) => match store.get(path).await {
                Ok(r) => {
                    let body = r.bytes().await.map_err(|e| e.to_string())?;
                    let text = std::str::from_utf8(&body).unwrap_or("");
                    text.trim()
                        .parse::<BlobKey>()
                        .map(Some)
                        .map_err(|e| format!("reference {path} is damaged: {e}"))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Uploads one content object unless it is there already.
    async fn upload_content(&self, item: &RecoveryItem<'_>) -> Result<(), String> {
        let path = self.content_path(&item.key);
        let len = item.data.len();
        let s = &self.settings;
        let read = |offset: u64, n: usize| -> Result<Vec<u8>, String> {
            let mut buf = vec![0u8; n];
            item.data
                .read_at(offset, &mut buf)
                .map_err(|e| format!("reading {} to replicate it: {e}", item.id))?;
            Ok(buf)
        };
        if len <= s.part_size as u64 {
            let payload = PutPayload::from(read(0, len as usize)?);
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            return match self.store.put_opts(&path, payload, opts).await {
                // Same key, same bytes: what is there is what we would write.
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(object_store::Error::Precondition { .. }) => Ok(()),
                Err(e) => Err(format!("uploading {path}: {e}")),
            };
        }
        // Large: skip the upload when the content is there (an overwrite would be harmless,
        // but costs the whole transfer again).
        if let Ok(meta) = self.store.head(&path).await
            && meta.size == len
        {
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart_opts(&path, PutMultipartOptions::default())
            .await
            .map_err(|e| format!("starting the multipart upload of {path}: {e}"))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, s.part_size);
        let in_flight = (s.concurrency / 2).max(2);
        let mut offset = 0u64;
        while offset < len {
            let n = (len - offset).min(s.part_size as u64) as usize;
            let piece = match read(offset, n) {
                Ok(p) => p,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = w.wait_for_capacity(in_flight).await {
                return Err(format!("uploading a part of {path}: {e}"));
            }
            w.put(Bytes::from(piece));
            offset += n as u64;
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| format!("completing the multipart upload of {path}: {e}"))
    }

    /// Fails when a garbage collection holds a (fresh) marker on any of `keys`: one listing of
    /// `gc/` for the whole batch (almost always empty), not a request per blob.
    async fn check_markers(&self, keys: &[BlobKey]) -> Result<(), String> {
        let markers = self.list_paths("gc").await?;
        let now = now_ms();
        for m in markers {
            let Some(Ok(key)) = m.location.filename().map(str::parse::<BlobKey>) else {
                continue;
            };
            let stale = now - m.last_modified.timestamp_millis() > STALE_MARKER.as_millis() as i64;
            if !stale && keys.contains(&key) {
                return Err(format!(
                    "content {key} {MARKED}; retry the PUT once the collection is over (about {} s)",
                    2 * gc_settle(&self.settings).as_secs()
                ));
            }
        }
        Ok(())
    }

    async fn put_batch(&self, items: &[RecoveryItem<'_>]) -> Result<(), String> {
        let c = self.settings.concurrency.max(1);
        // Each distinct content once.
        let mut seen = HashSet::new();
        let distinct: Vec<&RecoveryItem<'_>> =
            items.iter().filter(|i| seen.insert(i.key)).collect();
        let uploads: Vec<Job<'_, ()>> = distinct
            .iter()
            .map(|&i| self.upload_content(i).boxed())
            .collect();
        let keys: Vec<BlobKey> = distinct.iter().map(|i| i.key).collect();
        let (up, mk) = futures::join!(all(uploads, c), self.check_markers(&keys));
        up?;
        mk?;
        // Content is all there: now the references.
        let refs: Vec<Job<'_, ()>> = items
            .iter()
            .map(|i| {
                let path = self.ref_path(&i.id);
                let body = match &i.id {
                    BlobId::Content(_) => PutPayload::default(),
                    BlobId::Named(..) => PutPayload::from(i.key.to_string().into_bytes()),
                };
                async move {
                    self.store
                        .put(&path, body)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("writing reference {path}: {e}"))
                }
                .boxed()
            })
            .collect();
        all(refs, c).await.map(|_| ())
    }

    async fn list_paths(&self, under: &str) -> Result<Vec<object_store::ObjectMeta>, String> {
        let prefix = self.path(under);
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("listing {prefix}: {e}"))
    }

    /// Every reference: its id and the content key it names.
    async fn references(&self) -> Result<Vec<(BlobId, BlobKey)>, String> {
        let mut out = Vec::new();
        for meta in self.list_paths("pin").await? {
            if let Some(Ok(k)) = meta.location.filename().map(str::parse::<BlobKey>) {
                out.push((BlobId::Content(k), k));
            }
        }
        let named = self.list_paths("named").await?;
        let store = &*self.store;
        let ids: Vec<(BlobId, ObjPath)> = named
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_owned()).collect();
                let [.., job, name] = parts.as_slice() else {
                    return None;
                };
                let job = job.parse::<JobId>().ok()?;
                let name = decode_name(name)?;
                Some((BlobId::Named(job, name), m.location))
            })
            .collect();
        let reads: Vec<Job<'_, Option<(BlobId, BlobKey)>>> = ids
            .into_iter()
            .map(|(id, path)| {
                async move {
                    Backend::read_ref(store, &path, &id)
                        .await
                        .map(|k| k.map(|k| (id, k)))
                }
                .boxed()
            })
            .collect();
        let keys = all(reads, self.settings.concurrency.max(1)).await?;
        out.extend(keys.into_iter().flatten());
        Ok(out)
    }

    async fn gc_pass(&self) -> Result<GcReport, String> {
        let settle = gc_settle(&self.settings);
        let started = Instant::now();
        let mut report = GcReport::default();
        let now = now_ms();
        // Stale markers of a pass that died.
        for m in self.list_paths("gc").await? {
            if now - m.last_modified.timestamp_millis() > STALE_MARKER.as_millis() as i64 {
                let _ = self.store.delete(&m.location).await;
            }
        }
        let contents = self.list_paths("content").await?;
        report.content_objects = contents.len() as u64;
        let grace = self.settings.gc_grace.as_millis() as i64;
        let mut candidates: BTreeMap<BlobKey, ObjPath> = BTreeMap::new();
        for m in contents {
            let Some(Ok(key)) = m.location.filename().map(str::parse::<BlobKey>) else {
                continue;
            };
            if now - m.last_modified.timestamp_millis() < grace {
                report.kept_young += 1;
            } else {
                candidates.insert(key, m.location);
            }
        }
        let referenced: BTreeSet<BlobKey> = self
            .references()
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        candidates.retain(|k, _| !referenced.contains(k));
        report.kept_referenced =
            report.content_objects - report.kept_young - candidates.len() as u64;
        if candidates.is_empty() {
            return Ok(report);
        }
        // (3) markers, create-only: content another pass holds is skipped.
        let c = self.settings.concurrency.max(1);
        let marks: Vec<futures::future::BoxFuture<'_, (BlobKey, Result<bool, String>)>> =
            candidates
                .keys()
                .map(|&key| {
                    async move {
                        let opts = PutOptions {
                            mode: PutMode::Create,
                            ..Default::default()
                        };
                        let r = match self
                            .store
                            .put_opts(&self.marker_path(&key), PutPayload::default(), opts)
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(object_store::Error::AlreadyExists { .. })
                            | Err(object_store::Error::Precondition { .. }) => Ok(false),
                            Err(e) => Err(format!("marking {key} for collection: {e}")),
                        };
                        (key, r)
                    }
                    .boxed()
                })
                .collect();
        let outcomes: Vec<(BlobKey, Result<bool, String>)> = futures::stream::iter(marks)
            .buffer_unordered(c)
            .collect()
            .await;
        let mut marked = Vec::new();
        let mut failed = None;
        for (key, r) in outcomes {
            match r {
                Ok(true) => marked.push(key),
                Ok(false) => report.skipped_marked += 1,
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            self.unmark(&marked).await;
            return Err(e);
        }
        // (4) every PUT that checked before a marker existed has ended.
        tokio::time::sleep(settle).await;
        // (5) references again; delete what is still unreferenced.
        let result = async {
            let referenced: BTreeSet<BlobKey> = self
                .references()
                .await?
                .into_iter()
                .map(|(_, k)| k)
                .collect();
            let doomed: Vec<&BlobKey> = marked.iter().filter(|k| !referenced.contains(k)).collect();
            report.kept_referenced += (marked.len() - doomed.len()) as u64;
            let deletes: Vec<Job<'_, ()>> = doomed
                .into_iter()
                .map(|key| {
                    let path = &candidates[key];
                    async move {
                        // A pass far slower than planned stops before its markers could look
                        // stale.
                        if started.elapsed() > STALE_MARKER / 3 {
                            return Err(
                                "the pass took too long; the rest is left to the next".into()
                            );
                        }
                        match self.store.delete(path).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(format!("deleting {path}: {e}")),
                        }
                    }
                    .boxed()
                })
                .collect();
            let n = deletes.len() as u64;
            all(deletes, c).await?;
            report.deleted += n;
            Ok(())
        }
        .await;
        // (6) a PUT that saw no marker after (7) started after every deletion of this pass.
        tokio::time::sleep(settle).await;
        self.unmark(&marked).await;
        result.map(|()| report)
    }

    async fn unmark(&self, keys: &[BlobKey]) {
        let jobs: Vec<Job<'_, ()>> = keys
            .iter()
            .map(|key| {
                async move {
                    if let Err(e) = self.store.delete(&self.marker_path(key)).await {
                        tracing::warn!(location = %self.location, key = %key, error = %e,
                            "cannot remove a collection marker; the next pass removes it once stale");
                    }
                    Ok(())
                }
                .boxed()
            })
            .collect();
        let _ = all(jobs, self.settings.concurrency).await;
    }

    fn gc(&self) -> Result<GcReport, RecoveryError> {
        // Its own bound: a pass waits twice the PUT timeout and may list a large bucket.
        let f = self.gc_pass();
        let out = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.runtime().block_on(f)).join())
                .map_err(|_| self.err("garbage collection", "its thread panicked"))?
        } else {
            self.runtime().block_on(f)
        };
        let report = out.map_err(|e| self.err("garbage collection", e))?;
        tracing::info!(location = %self.location, ?report, "recovery store garbage collection");
        Ok(report)
    }
}

/// One request of a batch; boxed so that the batch's future is `Send` whatever borrows it holds.
type Job<'a, T> = futures::future::BoxFuture<'a, Result<T, String>>;

/// Runs `jobs`, at most `concurrency` at once; the first failure fails the whole.
async fn all<T: Send>(jobs: Vec<Job<'_, T>>, concurrency: usize) -> Result<Vec<T>, String> {
    futures::stream::iter(jobs)
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// How long a collection waits for PUTs in flight: their bound plus a margin for clock rates.
fn gc_settle(s: &ObjectStoreSettings) -> Duration {
    s.timeout + s.timeout / 10 + Duration::from_secs(1)
}

/// A streamed read of one object: one body chunk in memory at a time.
struct ObjectReader {
    owner: Arc<Backend>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            let stream = &mut self.stream;
            let next = self
                .owner
                .run(
                    "reading",
                    async move { Ok::<_, String>(stream.next().await) },
                )
                .map_err(std::io::Error::other)?;
            match next {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(self.owner.err("reading", e)));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl RecoveryStore for ObjectRecoveryStore {
    fn put(&self, items: &[RecoveryItem<'_>]) -> Result<(), RecoveryError> {
        if items.is_empty() {
            return Ok(());
        }
        let this: &Backend = &self.0;
        this.run("replicating a PUT", this.put_batch(items))
    }

    fn get(&self, id: &BlobId) -> Result<Option<Box<dyn Read + Send>>, RecoveryError> {
        let store = Arc::clone(&self.0.store);
        let ref_path = self.0.ref_path(id);
        let id2 = id.clone();
        let this: &Backend = &self.0;
        let content = |k: &BlobKey| this.content_path(k);
        let found = self.0.run("reading", async move {
            let Some(key) = Backend::read_ref(&*store, &ref_path, &id2).await? else {
                return Ok::<_, String>(None);
            };
            let path = content(&key);
            match store.get(&path).await {
                Ok(r) => Ok(Some(r.into_stream())),
                Err(object_store::Error::NotFound { .. }) => {
                    Err(format!("{path} is missing although {ref_path} names it"))
                }
                Err(e) => Err(format!("reading {path}: {e}")),
            }
        })?;
        Ok(found.map(|stream| {
            Box::new(ObjectReader {
                owner: Arc::clone(&self.0),
                stream,
                chunk: Bytes::new(),
            }) as Box<dyn Read + Send>
        }))
    }

    fn key_of(&self, id: &BlobId) -> Result<Option<BlobKey>, RecoveryError> {
        let path = self.0.ref_path(id);
        self.0.run(
            "reading a reference",
            Backend::read_ref(&*self.0.store, &path, id),
        )
    }

    fn delete(&self, id: &BlobId) -> Result<(), RecoveryError> {
        let path = self.0.ref_path(id);
        self.0.run("deleting", async {
            match self.0.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(format!("deleting {path}: {e}")),
            }
        })
    }

    fn delete_job(&self, job: &JobId) -> Result<(), RecoveryError> {
        let this: &Backend = &self.0;
        this.run("deleting a job", async {
            let paths = this.list_paths(&format!("named/{job}")).await?;
            let deletes: Vec<Job<'_, ()>> = paths
                .into_iter()
                .map(|m| {
                    async move {
                        match this.store.delete(&m.location).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(format!("deleting {}: {e}", m.location)),
                        }
                    }
                    .boxed()
                })
                .collect();
            all(deletes, this.settings.concurrency.max(1))
                .await
                .map(|_| ())
        })
    }

    fn list(&self) -> Result<Vec<BlobId>, RecoveryError> {
        let this: &Backend = &self.0;
        let mut ids: Vec<BlobId> = this
            .run("listing", this.references())?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn purge(&self) -> Result<(), RecoveryError> {
        let this: &Backend = &self.0;
        let n = this.run("purging", async {
            // Only what this backend writes: a prefix may be shared (or be the bucket's root).
            let mut all = Vec::new();
            for dir in ["pin", "named", "content", "gc"] {
                all.extend(this.list_paths(dir).await?);
            }
            let n = all.len();
            let paths = futures::stream::iter(all.into_iter().map(|m| Ok(m.location))).boxed();
            this.store
                .delete_stream(paths)
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| format!("deleting: {e}"))?;
            Ok::<_, String>(n)
        })?;
        tracing::info!(location = %this.location, objects = n, "recovery store purged");
        Ok(())
    }

    fn gc(&self) -> Result<GcReport, RecoveryError> {
        self.0.gc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_to_key_safe_segments_and_back() {
        for name in ["", "a", "lib/app-1.0.jar", "é ü/../x", "=", &"x".repeat(64)] {
            let seg = encode_name(name);
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
                "{seg}"
            );
            assert_eq!(decode_name(&seg).as_deref(), Some(name));
        }
        assert_ne!(encode_name(""), encode_name("="));
        assert_eq!(decode_name("!!"), None);
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let c = ObjectStoreConfig {
            uri: "s3://b/p".into(),
            secret_key: Some("hunter2-secret".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
