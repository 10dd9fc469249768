//! Recovery (high availability): every write replicated to a store outside the server, so that
//! another server — another process, or another host — can serve every blob after a failover.
//!
//! The store defines what a backend must do ([`RecoveryStore`], in `store/replica.rs`) and
//! read-repairs local misses from it; the backends live here, above the store:
//! [`RedbRecoveryStore`] (`redb_file.rs`), one redb file on a shared mount. This module also
//! resolves which one `--recovery-dir` and Flink's keys ask for.

mod redb_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Configuration, keys};
pub use crate::store::{BlobBytes, RecoveryError, RecoveryItem, RecoveryStore};
pub use redb_file::{RedbRecoveryStore, recovery_db_path};

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
pub enum RecoveryConfigError {
    /// A `recovery.mode` other than `standalone` or `zookeeper` (either in any case); holds it.
    #[error("unknown {key} {0:?} (expected standalone or zookeeper)", key = keys::RECOVERY_MODE)]
    UnknownMode(String),
    /// In `zookeeper` mode, a `state.backend` other than `filesystem`; holds it.
    #[error("{key} {0:?} cannot hold recovery data: use filesystem", key = keys::STATE_BACKEND)]
    Backend(String),
    /// In `zookeeper` mode, a blank `state.backend.fs.dir.recovery`.
    #[error("{key} is empty", key = keys::RECOVERY_PATH)]
    EmptyPath,
    /// The recovery store could not be opened.
    #[error(transparent)]
    Open(#[from] RecoveryError),
}

/// The recovery directory Flink's keys ask for: `None` in standalone mode. A `file://` URI is
/// taken as its path. As in the original, `zookeeper` without the two state-backend keys falls
/// back to standalone (with a warning).
pub fn recovery_dir_from_config(
    conf: &Configuration,
) -> Result<Option<PathBuf>, RecoveryConfigError> {
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
    let path = path.trim();
    if path.is_empty() {
        return Err(RecoveryConfigError::EmptyPath);
    }
    Ok(Some(PathBuf::from(
        path.strip_prefix("file://").unwrap_or(path),
    )))
}

/// The recovery store named by `--recovery-dir`, or else by Flink's keys; `None` in standalone
/// mode.
pub fn from_cli_and_config(
    dir: Option<&Path>,
    conf: &Configuration,
) -> Result<Option<Arc<dyn RecoveryStore>>, RecoveryConfigError> {
    let dir = match dir {
        Some(d) => Some(d.to_path_buf()),
        None => recovery_dir_from_config(conf)?,
    };
    match dir {
        None => Ok(None),
        Some(d) => Ok(Some(RedbRecoveryStore::open(&d)? as Arc<dyn RecoveryStore>)),
    }
}
