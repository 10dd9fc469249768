//! Recovery (high availability): every write replicated to a store outside the server, so that
//! another server — another process, or another host — can serve every blob after a failover.
//!
//! The store defines what a backend must do ([`RecoveryStore`], in `store/replica.rs`) and
//! read-repairs local misses from it; the backends live here, above the store:
//! [`RedbRecoveryStore`] (`redb_file.rs`), one redb file on a shared mount, and, with the
//! `object-store` feature (on by default), `ObjectRecoveryStore` (`object.rs`), an S3 bucket.
//! This module resolves which one a recovery URI names ([`RecoveryTarget`]): `--recovery-dir`,
//! or Flink's `state.backend.fs.dir.recovery`.

#[cfg(feature = "object-store")]
mod object;
mod redb_file;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Configuration, keys};
pub use crate::store::{BlobBytes, GcReport, RecoveryError, RecoveryItem, RecoveryStore};
#[cfg(feature = "object-store")]
pub use object::{
    MARKED, ObjectRecoveryStore, ObjectStoreConfig, ObjectStoreSettings, STALE_MARKER, decode_name,
    encode_name,
};
pub use redb_file::{RedbRecoveryStore, recovery_db_path};

/// URI schemes of object stores (`s3a` as Hadoop and Flink spell S3 too).
const OBJECT_SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// What a recovery URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// A plain path or `file:///path`: the redb file `<path>/blob/recovery.redb`.
    File(PathBuf),
    /// `s3://bucket/prefix` (or `gs://`, `az://`): an object store; holds the URI.
    ObjectStore(String),
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::File(p) => write!(f, "{}", p.display()),
            RecoveryTarget::ObjectStore(u) => f.write_str(u),
        }
    }
}

impl RecoveryTarget {
    /// Reads a recovery URI: a path, `file:///path`, or `s3://bucket/prefix`. Any other scheme is
    /// refused (it would otherwise be taken as a relative path).
    pub fn parse(uri: &str) -> Result<RecoveryTarget, RecoveryConfigError> {
        let uri = uri.trim();
        if uri.is_empty() {
            return Err(RecoveryConfigError::EmptyPath);
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(RecoveryTarget::File(PathBuf::from(uri)));
        };
        let scheme_like = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_like {
            return Ok(RecoveryTarget::File(PathBuf::from(uri)));
        }
        let lower = scheme.to_ascii_lowercase();
        if lower == "file" {
            // file:///path, or file://localhost/path.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(RecoveryConfigError::Uri {
                    uri: uri.to_owned(),
                    why: "a file URI names an absolute path: file:///path".into(),
                });
            }
            return Ok(RecoveryTarget::File(PathBuf::from(path)));
        }
        if OBJECT_SCHEMES.contains(&lower.as_str()) {
            let bucket = rest.split('/').next().unwrap_or("");
            if bucket.is_empty() {
                return Err(RecoveryConfigError::Uri {
                    uri: uri.to_owned(),
                    why: format!("no bucket: expected {lower}://BUCKET/PREFIX"),
                });
            }
            if cfg!(feature = "object-store") {
                return Ok(RecoveryTarget::ObjectStore(uri.to_owned()));
            }
            return Err(RecoveryConfigError::Uri {
                uri: uri.to_owned(),
                why: "this build lacks the object-store cargo feature".into(),
            });
        }
        Err(RecoveryConfigError::Uri {
            uri: uri.to_owned(),
            why: format!(
                "unknown scheme {scheme}:// (expected a path, file:///path or s3://bucket/prefix)"
            ),
        })
    }

    /// Opens the store: the redb file, or the object store configured from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`) and Flink's keys in `conf` (`s3.endpoint`, `s3.access-key`,
    /// `s3.secret-key`, `s3.path.style.access`, which win over the environment), and probes it.
    pub fn open(
        &self,
        conf: &Configuration,
    ) -> Result<Arc<dyn RecoveryStore>, RecoveryConfigError> {
        match self {
            RecoveryTarget::File(p) => Ok(RedbRecoveryStore::open(p)? as Arc<dyn RecoveryStore>),
            #[cfg(feature = "object-store")]
            RecoveryTarget::ObjectStore(uri) => {
                let config = object_store_config(uri, conf)?;
                Ok(Arc::new(ObjectRecoveryStore::open(&config)?) as Arc<dyn RecoveryStore>)
            }
            #[cfg(not(feature = "object-store"))]
            RecoveryTarget::ObjectStore(uri) => {
                let _ = conf;
                Err(RecoveryConfigError::Uri {
                    uri: uri.clone(),
                    why: "this build lacks the object-store cargo feature".into(),
                })
            }
        }
    }
}

/// The object store's configuration for `uri`: the environment, then Flink's keys in `conf`.
#[cfg(feature = "object-store")]
pub fn object_store_config(
    uri: &str,
    conf: &Configuration,
) -> Result<ObjectStoreConfig, RecoveryConfigError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let secs = |key: &str, default: std::time::Duration| -> Result<_, RecoveryConfigError> {
        match conf.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(std::time::Duration::from_secs_f64)
                .ok_or_else(|| RecoveryConfigError::Value {
                    key: key.to_owned(),
                    why: format!("{v:?} is not a number of seconds"),
                }),
        }
    };
    let mut settings = ObjectStoreSettings::default();
    settings.timeout = secs(keys::RECOVERY_TIMEOUT, settings.timeout)?;
    settings.request_timeout = settings.request_timeout.min(settings.timeout);
    settings.gc_grace = secs(keys::RECOVERY_GC_GRACE, settings.gc_grace)?;
    let path_style = match conf.get(keys::S3_PATH_STYLE) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("true") => Some(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Some(false),
        Some(v) => {
            return Err(RecoveryConfigError::Value {
                key: keys::S3_PATH_STYLE.to_owned(),
                why: format!("{v:?} is neither true nor false"),
            });
        }
    };
    Ok(ObjectStoreConfig {
        uri: uri.to_owned(),
        endpoint: conf
            .get(keys::S3_ENDPOINT)
            .map(str::to_owned)
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT")),
        access_key: conf.get(keys::S3_ACCESS_KEY).map(str::to_owned),
        secret_key: conf.get(keys::S3_SECRET_KEY).map(str::to_owned),
        region: None,
        allow_http: env("AWS_ALLOW_HTTP").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        path_style,
        settings,
    })
}

/// The recovery mode of Flink's `recovery.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryMode {
    /// `standalone` (the default): no recovery store.
    Standalone,
    /// `zookeeper`: writes replicated to the directory Flink's state-backend keys name.
    Zookeeper,
}

/// Errors in the recovery configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryConfigError {
    /// A `recovery.mode` other than `standalone` or `zookeeper` (either in any case); holds it.
    #[error("unknown {key} {0:?} (expected standalone or zookeeper)", key = keys::RECOVERY_MODE)]
    UnknownMode(String),
    /// In `zookeeper` mode, a `state.backend` other than `filesystem`; holds it.
    #[error("{key} {0:?} cannot hold recovery data: use filesystem", key = keys::STATE_BACKEND)]
    Backend(String),
    /// A blank recovery URI (`--recovery-dir` or `state.backend.fs.dir.recovery`).
    #[error("the recovery URI ({key}, --recovery-dir) is empty", key = keys::RECOVERY_PATH)]
    EmptyPath,
    /// A recovery URI that names no store this build can open: an unknown scheme, an S3 URI
    /// without a bucket, a `file://` URI with a relative path.
    #[error("recovery URI {uri:?}: {why}")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        why: String,
    },
    /// A recovery setting that does not parse.
    #[error("{key}: {why}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The recovery store could not be opened.
    #[error(transparent)]
    Open(#[from] RecoveryError),
}

/// The recovery store Flink's keys ask for: `None` in standalone mode. As in the original,
/// `zookeeper` without the two state-backend keys falls back to standalone (with a warning).
pub fn recovery_dir_from_config(
    conf: &Configuration,
) -> Result<Option<RecoveryTarget>, RecoveryConfigError> {
    let mode = match conf
        .get(keys::RECOVERY_MODE)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("standalone") => RecoveryMode::Standalone,
        Some("zookeeper") => RecoveryMode::Zookeeper,
        Some(other) => return Err(RecoveryConfigError::UnknownMode(other.to_string())),
    };
    if mode == RecoveryMode::Standalone {
        return Ok(None);
    }
    let (Some(backend), Some(path)) = (
        conf.get(keys::STATE_BACKEND),
        conf.get_raw(keys::RECOVERY_PATH),
    ) else {
        tracing::warn!(
            "recovery.mode is zookeeper but no filesystem state backend is configured; running without recovery"
        );
        return Ok(None);
    };
    if !backend.eq_ignore_ascii_case("filesystem") {
        return Err(RecoveryConfigError::Backend(backend.to_string()));
    }
    RecoveryTarget::parse(path).map(Some)
}

/// The recovery store named by `--recovery-dir` (a path or URI), or else by Flink's keys; `None`
/// in standalone mode.
pub fn from_cli_and_config(
    uri: Option<&str>,
    conf: &Configuration,
) -> Result<Option<Arc<dyn RecoveryStore>>, RecoveryConfigError> {
    let target = match uri {
        Some(u) => Some(RecoveryTarget::parse(u)?),
        None => recovery_dir_from_config(conf)?,
    };
    target.map(|t| t.open(conf)).transpose()
}
