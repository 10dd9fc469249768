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
//! | `P/content/<sha1 hex>` | the blob's bytes; user metadata `origin` (`key` or `name`) and `creation` (32 random hex digits naming this creation) | once per distinct content, create-only (`If-None-Match: *`); multipart past [`ObjectStoreSettings::part_size`] |
//! | `P/pin/<sha1 hex>` | empty | by a content PUT that did not create the content object itself (it was there: deduplicated, put again after a DELETE, first put by name; or a multipart upload) |
//! | `P/unpin/<sha1 hex>/<creation>` | empty | by a DELETE by key of content a PUT by key created: that creation is no longer reachable by key |
//! | `P/named/<job hex>/<name>` | the content key, 40 hex digits | by a named PUT; `<name>` is base64url (no padding) of the UTF-8 name, `=` for the empty name |
//! | `P/gc/<sha1 hex>` | empty | by a garbage collection, while it may delete that content |
//!
//! Content objects are immutable: the same key means the same bytes, so a second upload of the
//! same content is refused harmlessly (412) and a retried request is safe.
//!
//! **Reachable by key**: `content/X` exists, and `pin/X` exists, or the content object has
//! `origin=key` and no `unpin/X/<its creation>` exists. So a content PUT that creates the
//! content costs one object write: the content object is its own key reference. An unpin names
//! the one creation it hides: content collected and created again later (a new creation) is never
//! hidden by an old unpin, and an unpin that no longer applies can never apply again.
//!
//! **Reachable by name**: `named/<job>/<name>` exists (and names content that exists). A GET by
//! name reads the reference and then the content; a job delete removes every `named/<job>/`
//! object. A named PUT writes the content with `origin=name` (or finds it there) and then the
//! reference: two round trips, as before.
//!
//! **DELETE by key** reads the content object's metadata (one HEAD, together with deleting
//! `pin/X`) and, when `origin=key`, writes `unpin/X/<creation>`: a named blob with the same bytes
//! keeps them (its reference is elsewhere). Content no reference holds any more stays until a
//! garbage collection ([`ObjectRecoveryStore::gc`]).
//!
//! **Buckets of the earlier layout** (content objects without metadata, every PUT by key
//! writing `pin/X`) are read unchanged: content without `origin` metadata counts as `origin=name`
//! (reachable by key through its pin only), which is what that layout meant.
//!
//! # A PUT
//!
//! One group commit is one call: the content objects of all its items go up concurrently (at most
//! [`ObjectStoreSettings::concurrency`] at a time; a large blob in parts, read from the spool
//! part by part, so memory stays bounded whatever the size). A content PUT whose create-only
//! upload succeeded is done then: its content object is its key reference, and it needs no check
//! of a garbage collection's markers (see below). So a batch of such PUTs — new content put by
//! key, what `blobvault bench` does — costs one round trip and one object write per blob, and
//! nothing else. What is left needs a reference written afterwards: named items, and content PUTs
//! that found their content there (412) or uploaded it in parts (a multipart completion is not
//! create-only, so its `origin` cannot be trusted to stay `key`; such content carries
//! `origin=name` and gets a pin). Before writing those references the batch lists `gc/` once,
//! checking that no garbage collection has marked their content: beside the uploads when the
//! batch holds a named item (two round trips, as before), after them otherwise (a deduplicated
//! content PUT: three round trips — create, listing, pin).
//!
//! The whole call is bounded by [`ObjectStoreSettings::timeout`]: past it the PUT fails (and the
//! local store does not apply it). The uploads and references have three quarters of it; when
//! they fail (or run out of it) the PUT takes back every content object it tried to create by
//! key with an `unpin/X/<creation>` of that creation (the creation is this PUT's own, so the
//! unpin hides nothing else; it is written even when the create's outcome is unknown). So a
//! failed PUT leaves no blob visible by key, unless the store fails the take-back too (it is then
//! likely unreachable): those bytes then stay reachable by their key, as the references a failed
//! second round trip may leave written (the client got an error either way, as for a failed local
//! commit: README "Failure modes").
//!
//! # Garbage collection, and why it cannot race a PUT
//!
//! Content is *held* when a pin or a name names it, or it is its own key reference (`origin=key`
//! and no unpin of its creation). A pass: (1) list `content/`, keep candidates older than
//! [`ObjectStoreSettings::gc_grace`]; (2) list pins, names and unpins, drop the candidates named,
//! then read the metadata of the rest (one HEAD each) and drop those held; (3) create a marker
//! `gc/<key>` for each (create-only: a marker another pass holds makes this pass skip that
//! content); (4) wait `S`; (5) list the references and read the metadata again (after the
//! listings), delete the content still not held (nor younger than the grace period: content
//! collected by another pass and created again); (6) wait `S`; (7) delete the markers; (8) delete
//! every unpin older than `S` whose creation is gone: a HEAD of the content issued after the
//! listing of unpins finds no object or one of another creation (creations are unique, so that
//! one can never come back; the age lets a create request of a failed PUT that took it back land
//! first). `S` is the longest a PUT may take ([`ObjectStoreSettings::timeout`], plus a margin): a
//! PUT that ran longer has failed.
//!
//! Claim: no acknowledged PUT's content is deleted while its reference exists. A pass deletes
//! `X` at most once, at some `d`, holding its marker from its creation `m` to its deletion `e`
//! (`m + S <= l5 < h5 < d <= e - S`, where `l5` is step 5's listing of references and `h5` its
//! HEAD of `X`), and only if `h5` found an object at `X` that the references of `l5` do not hold.
//! Markers are create-only, so no two passes hold one on `X` at the same time.
//!
//! *A PUT by key whose create succeeded*, at `c`, with a fresh creation `n`: its object is held
//! from `c` on, unless a DELETE by key (or this PUT's own take-back, when it failed) writes
//! `unpin/X/n`. If `h5 > c` and the HEAD sees that object, it is held: not deleted. If `h5 < c`,
//! the object the HEAD saw was removed before `c` (the create succeeded). If this pass removed
//! it, its one deletion came before `c` and ours is untouched. Otherwise another pass removed it,
//! at some `d'` with `h5 < d' < c`, holding its marker then; for this pass's deletion to hit ours
//! we would need `d > c`, so `m < h5 < d' < c < d <= e`: both passes held a marker on `X` at
//! `d'`, impossible. (If `h5 > c` and ours had gone already, an earlier deletion took it: the same
//! argument, for that deletion.) So this PUT needs no look at the markers at all.
//!
//! *Any other PUT* (a name, or a pin after a 412) of content `X` lists the markers at some time
//! `h`, after it started (`s <= h`) and before it acknowledged (`end <= s + S`); it acknowledges
//! only if the marker was absent at `h`, and its reference is written by `end`. So `h < m` or
//! `h > e`.
//! - `h < m`: the PUT ended by `h + S < m + S`, before step 5 lists the references, so that
//!   listing sees its reference and `X` is not deleted.
//! - `h > e`: the pass deleted `X` (if at all) at `d <= e - S`, and the PUT started at
//!   `s >= h - S > d`: its upload (or the 412 saying `X` exists) came after the deletion.
//!
//! A DELETE by key's unpin only takes a reference away; a failed PUT's unpin names its own
//! creation only. Step 8 never deletes an unpin that applies: the creation it names is gone for
//! good. A PUT that finds a marker fails with [`MARKED`] in its message (content not held for
//! longer than the grace period and put again while a pass collects it: rare). The argument needs
//! the listings and HEADs to be strongly consistent (S3 is since 2020; SeaweedFS's filer is) and
//! the clocks of the servers to run at about the same rate (durations only are compared, with a
//! margin). A marker older than [`STALE_MARKER`] (a pass that died) is ignored by PUTs and removed
//! by the next pass; a pass stops deleting well before that age.
//!
//! Cost: a pass reads the metadata of every content object older than the grace period that no
//! pin or name holds (one HEAD each, [`ObjectStoreSettings::concurrency`] at a time), twice for
//! those it marks; `recovery ls` reads that of every unpinned content object.
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
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt,
    ObjectStoreScheme, PutMode, PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::key::{BlobId, BlobKey, JobId};
use crate::store::{GcReport, RecoveryError, RecoveryItem, RecoveryStore};

/// What a PUT's error says when it found a garbage collection's marker on its content.
pub const MARKED: &str = "is being garbage-collected in the recovery store";

/// Age past which a garbage collection's marker is taken as left by a pass that died.
pub const STALE_MARKER: Duration = Duration::from_secs(3600);

/// User metadata of a content object (`x-amz-meta-origin`): `key` when a PUT by key created it
/// (the object is then that key's reference), `name` otherwise.
const ORIGIN: &str = "origin";
/// User metadata naming one creation of a content object (`x-amz-meta-creation`).
const CREATION: &str = "creation";
/// The layout this code writes, recorded in `P/layout` (body and `x-amz-meta-layout`). Layout 1,
/// a pin per PUT by key, wrote no such object; its buckets are read as they are.
const LAYOUT: &str = "2";

/// A fresh creation id: 32 random hex digits (unique across servers and restarts).
fn creation_id() -> String {
    format!(
        "{:016x}{:016x}",
        crate::key::random_u64(),
        crate::key::random_u64()
    )
}

/// What a HEAD of a content object tells.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContentState {
    /// No such object.
    Missing,
    /// There.
    Present {
        /// Its creation, when a PUT by key created it (it is then its own key reference).
        by_key: Option<String>,
        /// When it was written (the store's clock), in ms since the epoch.
        modified_ms: i64,
    },
}

impl ContentState {
    fn of(attributes: &Attributes, modified_ms: i64) -> ContentState {
        let meta = |k: &'static str| attributes.get(&Attribute::Metadata(k.into()));
        let by_key = match (meta(ORIGIN), meta(CREATION)) {
            (Some(o), Some(c)) if &**o == "key" && !c.is_empty() => Some(c.to_string()),
            _ => None,
        };
        ContentState::Present {
            by_key,
            modified_ms,
        }
    }
}

/// The references of a bucket, as listed at one time.
#[derive(Debug, Default)]
struct Refs {
    /// Content keys with a `pin/`.
    pins: BTreeSet<BlobKey>,
    /// Named blobs and the content they name.
    named: Vec<(BlobId, BlobKey)>,
    /// Content keys named by a pin or a name.
    held: BTreeSet<BlobKey>,
    /// Unpinned creations, by content key.
    unpins: BTreeMap<BlobKey, BTreeSet<String>>,
}

impl Refs {
    /// Whether content `key` in `state` is held: named, pinned, or its own key reference.
    fn holds(&self, key: &BlobKey, state: &ContentState) -> bool {
        self.held.contains(key) || key_reference(state, self.unpins.get(key))
    }
}

/// Whether content in `state` is its own key reference, given the unpinned creations of its key.
fn key_reference(state: &ContentState, unpinned: Option<&BTreeSet<String>>) -> bool {
    match state {
        ContentState::Present {
            by_key: Some(c), ..
        } => !unpinned.is_some_and(|u| u.contains(c)),
        _ => false,
    }
}

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
        })?;
        self.check_layout()
    }

    /// Records this layout in `P/layout` and checks it: a bucket of a newer layout is refused,
    /// and so is a store (or a copy of the bucket) that does not keep user metadata, which
    /// says which content objects are their own key references (module docs, "Layout").
    fn check_layout(&self) -> Result<(), RecoveryError> {
        let path = self.path("layout");
        let found = self.run("reading its layout", async {
            match self.store.get(&path).await {
                Ok(r) => {
                    let meta = r
                        .attributes
                        .get(&Attribute::Metadata("layout".into()))
                        .cloned();
                    let body = r.bytes().await?;
                    Ok(Some((String::from_utf8_lossy(&body).into_owned(), meta)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let fail = |message: String| RecoveryError::Backend {
            path: self.location.clone(),
            message,
        };
        let no_metadata = |what: &str| {
            fail(format!(
                "{what} has lost its user metadata (x-amz-meta-*): this store, or whatever \
                 copied the bucket, does not keep it, and blobvault needs it to tell which \
                 content objects are references by key; use a store (and copies) that keep \
                 user metadata"
            ))
        };
        match found {
            Some((body, meta)) => {
                let version = body.trim();
                if version.parse::<u32>().map_or(true, |v| v > 2) {
                    return Err(fail(format!(
                        "{path} says layout {version:?}, which this build does not know: open it \
                         with the blobvault that wrote it (or a newer one)"
                    )));
                }
                if meta.is_none() {
                    return Err(no_metadata(path.as_ref()));
                }
                Ok(())
            }
            None => {
                let opts = PutOptions {
                    attributes: Attributes::from_iter([(
                        Attribute::Metadata("layout".into()),
                        LAYOUT.to_owned(),
                    )]),
                    ..Default::default()
                };
                let kept = self.run("recording its layout", async {
                    self.store
                        .put_opts(&path, PutPayload::from(LAYOUT.as_bytes().to_vec()), opts)
                        .await?;
                    let r = self
                        .store
                        .get_opts(&path, GetOptions::new().with_head(true))
                        .await?;
                    Ok::<_, object_store::Error>(
                        r.attributes
                            .get(&Attribute::Metadata("layout".into()))
                            .is_some(),
                    )
                });
                match kept {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(no_metadata(&format!("{path}, just written,"))),
                    // A reader with read-only credentials (a worker's cache) cannot record it;
                    // the store answered the listing above, so it is not down: go on, unchecked.
                    Err(e) => {
                        tracing::warn!(location = %self.location, error = %e,
                            "cannot record the layout (read-only credentials?); a server or \
                             recovery gc with write access records it at its next open");
                        Ok(())
                    }
                }
            }
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> RecoveryError {
        // One line: S3 error bodies are XML over several.
        let text = e.to_string().replace(['\r', '\n'], " ");
        let hint = if text.contains("NoSuchBucket") {
            "; the bucket does not exist: create it"
        } else if text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
            // The status as the client words it: a bare "403" also occurs in keys and durations.
            || text.contains("403 Forbidden")
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

    fn unpin_path(&self, key: &BlobKey, creation: &str) -> ObjPath {
        self.path(&format!("unpin/{key}/{creation}"))
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

    /// What a HEAD of `content/<key>` says.
    async fn content_state(&self, key: &BlobKey) -> Result<ContentState, String> {
        let path = self.content_path(key);
        match self
            .store
            .get_opts(&path, GetOptions::new().with_head(true))
            .await
        {
            Ok(r) => Ok(ContentState::of(
                &r.attributes,
                r.meta.last_modified.timestamp_millis(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(ContentState::Missing),
            Err(e) => Err(format!("reading the metadata of {path}: {e}")),
        }
    }

    /// The states of the content objects of `keys`, concurrently.
    async fn content_states(
        &self,
        keys: impl IntoIterator<Item = BlobKey>,
    ) -> Result<BTreeMap<BlobKey, ContentState>, String> {
        let jobs: Vec<Job<'_, (BlobKey, ContentState)>> = keys
            .into_iter()
            .map(|k| async move { Ok((k, self.content_state(&k).await?)) }.boxed())
            .collect();
        Ok(all(jobs, self.settings.concurrency)
            .await?
            .into_iter()
            .collect())
    }

    /// The unpinned creations of `key` (one listing of `unpin/<key>/`).
    async fn unpins_of(&self, key: &BlobKey) -> Result<BTreeSet<String>, String> {
        Ok(self
            .list_paths(&format!("unpin/{key}"))
            .await?
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .collect())
    }

    /// Whether a pin exists for `key`.
    async fn pinned(&self, key: &BlobKey) -> Result<bool, String> {
        let path = self.ref_path(&BlobId::Content(*key));
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(format!("reading {path}: {e}")),
        }
    }

    /// Whether `key` is reachable by key (module docs, "Layout"): the content's metadata, its pin
    /// and its unpins asked concurrently, one round trip.
    async fn reachable_by_key(&self, key: &BlobKey) -> Result<bool, String> {
        let (state, pinned, unpins) = futures::join!(
            self.content_state(key),
            self.pinned(key),
            self.unpins_of(key)
        );
        let state = state?;
        Ok(state != ContentState::Missing && (pinned? || key_reference(&state, Some(&unpins?))))
    }

    /// Uploads one content object unless it is there already. `creation` is given for content a
    /// PUT by key creates: it then carries `origin=key`. `Ok(true)`: this upload created the
    /// object with that creation, which is then its own key reference; `Ok(false)`: a pin is
    /// needed for a PUT by key (the content was there, or went up in parts).
    async fn upload_content(
        &self,
        item: &RecoveryItem<'_>,
        creation: Option<&str>,
    ) -> Result<bool, String> {
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
            let attributes = match creation {
                Some(c) => Attributes::from_iter([
                    (Attribute::Metadata(ORIGIN.into()), "key".to_owned()),
                    (Attribute::Metadata(CREATION.into()), c.to_owned()),
                ]),
                None => {
                    Attributes::from_iter([(Attribute::Metadata(ORIGIN.into()), "name".to_owned())])
                }
            };
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            return match self.store.put_opts(&path, payload, opts).await {
                Ok(_) => Ok(creation.is_some()),
                // Same key, same bytes: what is there is what we would write.
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(format!("uploading {path}: {e}")),
            };
        }
        // Large: skip the upload when the content is there (an overwrite would be harmless,
        // but costs the whole transfer again). No `origin=key`: a completion may overwrite.
        if let Ok(meta) = self.store.head(&path).await
            && meta.size == len
        {
            return Ok(false);
        }
        let opts = PutMultipartOptions {
            attributes: Attributes::from_iter([(
                Attribute::Metadata(ORIGIN.into()),
                "name".to_owned(),
            )]),
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(&path, opts)
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
            .map(|_| false)
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
        // Each distinct content once; a fresh creation for content a PUT by key may create (small
        // enough for a create-only upload).
        let mut seen = HashSet::new();
        let distinct: Vec<(&RecoveryItem<'_>, Option<String>)> = items
            .iter()
            .filter(|i| seen.insert(i.key))
            .map(|i| {
                let by_key = items
                    .iter()
                    .any(|j| j.key == i.key && matches!(j.id, BlobId::Content(_)));
                let small = i.data.len() <= self.settings.part_size as u64;
                (i, (by_key && small).then(creation_id))
            })
            .collect();
        let limit = self.settings.timeout * 3 / 4;
        let outcome = tokio::time::timeout(limit, self.put_objects(items, &distinct)).await;
        let error = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!(
                "no answer within {limit:?} (timed out; the endpoint is unreachable or too slow)"
            ),
        };
        // Take back what this PUT may have created by key: no blob of a failed PUT is visible.
        let tried: Vec<(BlobKey, &str)> = distinct
            .iter()
            .filter_map(|(i, c)| Some((i.key, c.as_deref()?)))
            .collect();
        self.take_back(&tried).await;
        Err(error)
    }

    /// The two round trips of a PUT (module docs, "A PUT").
    async fn put_objects(
        &self,
        items: &[RecoveryItem<'_>],
        distinct: &[(&RecoveryItem<'_>, Option<String>)],
    ) -> Result<(), String> {
        let c = self.settings.concurrency.max(1);
        let uploads: Vec<Job<'_, (BlobKey, bool)>> = distinct
            .iter()
            .map(|(i, creation)| {
                async move { Ok((i.key, self.upload_content(i, creation.as_deref()).await?)) }
                    .boxed()
            })
            .collect();
        // Named items always write a reference afterwards: check the markers now, beside the
        // uploads. Content a PUT by key creates needs no check (module docs, "Garbage
        // collection"): a batch of such PUTs makes no other request.
        let named = items.iter().any(|i| matches!(i.id, BlobId::Named(..)));
        let keys: Vec<BlobKey> = distinct.iter().map(|(i, _)| i.key).collect();
        let check = async {
            match named {
                true => self.check_markers(&keys).await,
                false => Ok(()),
            }
        };
        let (up, mk) = futures::join!(all(uploads, c), check);
        let own: HashSet<BlobKey> = up?
            .into_iter()
            .filter(|&(_, o)| o)
            .map(|(k, _)| k)
            .collect();
        mk?;
        // Content is all there: now the references still missing.
        let missing: Vec<&RecoveryItem<'_>> = items
            .iter()
            .filter(|i| !(matches!(i.id, BlobId::Content(_)) && own.contains(&i.key)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !named {
            // Pins of content found there: checked before they are written.
            let keys: Vec<BlobKey> = missing.iter().map(|i| i.key).collect();
            self.check_markers(&keys).await?;
        }
        let refs: Vec<Job<'_, ()>> = missing
            .into_iter()
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

    /// Unpins the creations `tried` of a failed PUT (best effort: failures are logged).
    async fn take_back(&self, tried: &[(BlobKey, &str)]) {
        let jobs: Vec<Job<'_, ()>> = tried
            .iter()
            .map(|&(key, creation)| {
                async move {
                    let path = self.unpin_path(&key, creation);
                    if let Err(e) = self.store.put(&path, PutPayload::default()).await {
                        tracing::warn!(location = %self.location, key = %key, error = %e,
                            "cannot take back the content of a failed PUT; it stays reachable by its key");
                    }
                    Ok(())
                }
                .boxed()
            })
            .collect();
        let _ = all(jobs, self.settings.concurrency).await;
    }

    async fn list_paths(&self, under: &str) -> Result<Vec<object_store::ObjectMeta>, String> {
        let prefix = self.path(under);
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("listing {prefix}: {e}"))
    }

    /// Every pin, name and unpin, listed concurrently (the names then read).
    async fn refs(&self) -> Result<Refs, String> {
        let (pins, named, unpins) = futures::join!(
            self.list_paths("pin"),
            self.named_refs(),
            self.list_unpins()
        );
        let mut refs = Refs {
            named: named?,
            ..Refs::default()
        };
        for meta in pins? {
            if let Some(Ok(k)) = meta.location.filename().map(str::parse::<BlobKey>) {
                refs.pins.insert(k);
            }
        }
        refs.held = refs
            .pins
            .iter()
            .copied()
            .chain(refs.named.iter().map(|(_, k)| *k))
            .collect();
        for (key, creation, _) in unpins? {
            refs.unpins.entry(key).or_default().insert(creation);
        }
        Ok(refs)
    }

    /// Every unpin: its content key, creation and listing entry.
    async fn list_unpins(
        &self,
    ) -> Result<Vec<(BlobKey, String, object_store::ObjectMeta)>, String> {
        Ok(self
            .list_paths("unpin")
            .await?
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_owned()).collect();
                let [.., key, creation] = parts.as_slice() else {
                    return None;
                };
                let key = key.parse::<BlobKey>().ok()?;
                Some((key, creation.clone(), m))
            })
            .collect())
    }

    /// Every named reference: its id and the content key it names.
    async fn named_refs(&self) -> Result<Vec<(BlobId, BlobKey)>, String> {
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
        Ok(keys.into_iter().flatten().collect())
    }

    /// Every blob: names, pins, and content that is its own key reference (one HEAD per content
    /// object no pin names).
    async fn blobs(&self) -> Result<Vec<BlobId>, String> {
        let refs = self.refs().await?;
        let contents = self.content_keys().await?;
        let unpinned: Vec<BlobKey> = contents
            .into_iter()
            .filter(|k| !refs.pins.contains(k))
            .collect();
        let states = self.content_states(unpinned).await?;
        let mut ids: Vec<BlobId> = refs.named.into_iter().map(|(id, _)| id).collect();
        ids.extend(refs.pins.iter().map(|k| BlobId::Content(*k)));
        ids.extend(
            states
                .iter()
                .filter(|(k, st)| key_reference(st, refs.unpins.get(k)))
                .map(|(k, _)| BlobId::Content(*k)),
        );
        Ok(ids)
    }

    /// The keys of every content object.
    async fn content_keys(&self) -> Result<Vec<BlobKey>, String> {
        Ok(self
            .list_paths("content")
            .await?
            .iter()
            .filter_map(|m| m.location.filename()?.parse::<BlobKey>().ok())
            .collect())
    }

    /// The candidates not held: named and pinned ones dropped first, the rest by their
    /// metadata (read after `refs` was listed), and content younger than the grace period
    /// (created again since it was listed).
    async fn not_held(
        &self,
        candidates: impl IntoIterator<Item = BlobKey>,
    ) -> Result<BTreeSet<BlobKey>, String> {
        let refs = self.refs().await?;
        let rest: Vec<BlobKey> = candidates
            .into_iter()
            .filter(|k| !refs.held.contains(k))
            .collect();
        let states = self.content_states(rest).await?;
        let now = now_ms();
        let grace = self.settings.gc_grace.as_millis() as i64;
        Ok(states
            .into_iter()
            .filter(|(k, st)| match st {
                ContentState::Missing => false,
                ContentState::Present { modified_ms, .. } => {
                    now - modified_ms >= grace && !refs.holds(k, st)
                }
            })
            .map(|(k, _)| k)
            .collect())
    }

    async fn gc_pass(&self) -> Result<GcReport, String> {
        let report = self.collect().await?;
        let unpins = self.remove_stale_unpins().await?;
        if unpins > 0 {
            tracing::info!(location = %self.location, unpins, "removed unpins of collected content");
        }
        Ok(report)
    }

    /// Step 8 of a pass (module docs): unpins older than `S` whose creation is gone.
    async fn remove_stale_unpins(&self) -> Result<u64, String> {
        let settle = gc_settle(&self.settings).as_millis() as i64;
        let now = now_ms();
        let old: Vec<(BlobKey, String, ObjPath)> = self
            .list_unpins()
            .await?
            .into_iter()
            .filter(|(_, _, m)| now - m.last_modified.timestamp_millis() > settle)
            .map(|(k, c, m)| (k, c, m.location))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        // Read after the listing: a creation found gone then is gone for good.
        let states = self
            .content_states(old.iter().map(|(k, _, _)| *k).collect::<BTreeSet<_>>())
            .await?;
        let stale: Vec<ObjPath> = old
            .into_iter()
            .filter(|(k, c, _)| match &states[k] {
                ContentState::Missing => true,
                ContentState::Present { by_key, .. } => by_key.as_deref() != Some(c.as_str()),
            })
            .map(|(_, _, p)| p)
            .collect();
        let n = stale.len() as u64;
        let deletes: Vec<Job<'_, ()>> = stale
            .into_iter()
            .map(|path| {
                async move {
                    match self.store.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(format!("deleting {path}: {e}")),
                    }
                }
                .boxed()
            })
            .collect();
        all(deletes, self.settings.concurrency).await?;
        Ok(n)
    }

    /// Steps 1 to 7 of a pass (module docs).
    async fn collect(&self) -> Result<GcReport, String> {
        let settle = gc_settle(&self.settings);
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
        let mut paths: BTreeMap<BlobKey, ObjPath> = BTreeMap::new();
        for m in contents {
            let Some(Ok(key)) = m.location.filename().map(str::parse::<BlobKey>) else {
                continue;
            };
            if now - m.last_modified.timestamp_millis() < grace {
                report.kept_young += 1;
            } else {
                paths.insert(key, m.location);
            }
        }
        // (2) what no reference holds.
        let candidates = self.not_held(paths.keys().copied()).await?;
        report.kept_referenced =
            report.content_objects - report.kept_young - candidates.len() as u64;
        if candidates.is_empty() {
            return Ok(report);
        }
        // (3) markers, create-only: content another pass holds is skipped. Their age is what
        // PUTs judge staleness by, so the pass's clock starts here, not at its listings (which
        // take one HEAD per candidate: a large bucket must not run out of time before marking).
        let started = Instant::now();
        let c = self.settings.concurrency.max(1);
        let marks: Vec<futures::future::BoxFuture<'_, (BlobKey, Result<bool, String>)>> =
            candidates
                .iter()
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
        // (5) references and metadata again; delete what is still not held.
        let result = async {
            let doomed = self.not_held(marked.iter().copied()).await?;
            report.kept_referenced += (marked.len() - doomed.len()) as u64;
            let deletes: Vec<Job<'_, ()>> = doomed
                .iter()
                .map(|key| {
                    let path = &paths[key];
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
        let this: &Backend = &self.0;
        let found = this.run("reading", async move {
            let key = match id {
                BlobId::Content(k) => *k,
                BlobId::Named(..) => {
                    let ref_path = this.ref_path(id);
                    let Some(key) = Backend::read_ref(&*this.store, &ref_path, id).await? else {
                        return Ok::<_, String>(None);
                    };
                    let path = this.content_path(&key);
                    return match this.store.get(&path).await {
                        Ok(r) => Ok(Some(r.into_stream())),
                        Err(object_store::Error::NotFound { .. }) => {
                            Err(format!("{path} is missing although {ref_path} names it"))
                        }
                        Err(e) => Err(format!("reading {path}: {e}")),
                    };
                }
            };
            // By key: the content (with its metadata), its pin and its unpins at once.
            let path = this.content_path(&key);
            let (content, pinned, unpins) = futures::join!(
                this.store.get(&path),
                this.pinned(&key),
                this.unpins_of(&key)
            );
            let r = match content {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(format!("reading {path}: {e}")),
            };
            let state = ContentState::of(&r.attributes, r.meta.last_modified.timestamp_millis());
            Ok((pinned? || key_reference(&state, Some(&unpins?))).then(|| r.into_stream()))
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
        let this: &Backend = &self.0;
        this.run("reading a reference", async move {
            match id {
                BlobId::Content(k) => Ok(this.reachable_by_key(k).await?.then_some(*k)),
                BlobId::Named(..) => Backend::read_ref(&*this.store, &this.ref_path(id), id).await,
            }
        })
    }

    fn delete(&self, id: &BlobId) -> Result<(), RecoveryError> {
        let this: &Backend = &self.0;
        let path = this.ref_path(id);
        this.run("deleting", async {
            let remove = async {
                match this.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(format!("deleting {path}: {e}")),
                }
            };
            let BlobId::Content(key) = id else {
                return remove.await;
            };
            // By key: the pin goes, and content that is its own key reference gets an unpin of
            // its creation.
            let (state, removed) = futures::join!(this.content_state(key), remove);
            removed?;
            if let ContentState::Present {
                by_key: Some(creation),
                ..
            } = state?
            {
                let unpin = this.unpin_path(key, &creation);
                this.store
                    .put(&unpin, PutPayload::default())
                    .await
                    .map_err(|e| format!("writing {unpin}: {e}"))?;
            }
            Ok(())
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
        let mut ids: Vec<BlobId> = this.run("listing", this.blobs())?;
        ids.sort();
        Ok(ids)
    }

    fn purge(&self) -> Result<(), RecoveryError> {
        let this: &Backend = &self.0;
        let n = this.run("purging", async {
            // Only what this backend writes: a prefix may be shared (or be the bucket's root).
            let mut all = Vec::new();
            for dir in ["pin", "unpin", "named", "content", "gc"] {
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
