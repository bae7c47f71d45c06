//! [`TlsReloader`]: swap a listener's certificates without a restart; new handshakes see the
//! new set, established connections keep the keys they negotiated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use super::error::TlsConfigError;
use super::resolver::{CertSet, SniResolver};

/// Replaces the certificates of the listeners sharing one [`TlsConfig`](super::TlsConfig).
/// A reload is one atomic swap: each handshake sees the old set or the new one whole, and
/// open connections are untouched.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    resolver: Arc<SniResolver>,
}

impl TlsReloader {
    pub(crate) fn new(resolver: Arc<SniResolver>) -> Self {
        TlsReloader { resolver }
    }

    /// Serves `certs` from the next handshake on.
    pub fn reload(&self, certs: CertSet) {
        self.resolver.set.store(Arc::new(certs));
    }

    /// The set being served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.resolver.set.load_full()
    }

    /// Reads every certificate made by
    /// [`ServerCert::from_pem_files`](super::ServerCert::from_pem_files) again and serves the
    /// result. All or nothing: when any file fails, the current set stays.
    ///
    /// # Errors
    /// A file cannot be read or holds no valid certificate and key (the current set stays).
    pub fn reload_files(&self) -> Result<(), TlsConfigError> {
        let fresh = self.current().reread()?;
        self.reload(fresh);
        Ok(())
    }

    /// Checks the modification times of the certificate files every `every` and reloads when
    /// one changed (a failed reload is logged and tried again at the next change). The watch
    /// runs on the current tokio runtime until the returned [`ReloadWatch`] is dropped.
    pub fn watch_files(&self, every: Duration) -> ReloadWatch {
        let reloader = self.clone();
        // Taken now, not when the task first runs: a change made right after this call counts.
        let mut seen = reloader.modified();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = reloader.modified();
                if now != seen {
                    seen = now;
                    reloader.reload_logged("a certificate file changed");
                }
            }
        });
        ReloadWatch(task)
    }

    /// Reloads the certificate files on each `kind` signal (e.g. `SignalKind::hangup()`, as
    /// nginx does), until the returned [`ReloadWatch`] is dropped.
    ///
    /// # Errors
    /// The signal handler cannot be installed.
    pub fn reload_on_signal(&self, kind: SignalKind) -> std::io::Result<ReloadWatch> {
        let mut signals = signal(kind)?;
        let reloader = self.clone();
        let task = tokio::spawn(async move {
            while signals.recv().await.is_some() {
                reloader.reload_logged("reload signal");
            }
        });
        Ok(ReloadWatch(task))
    }

    fn reload_logged(&self, why: &str) {
        match self.reload_files() {
            Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(why, error = %e, "TLS certificate reload failed; keeping the current certificates")
            }
        }
    }

    /// The modification times of every certificate file, in a stable order.
    fn modified(&self) -> Vec<(PathBuf, Option<SystemTime>)> {
        let set = self.current();
        let mut files: Vec<(PathBuf, Option<SystemTime>)> = set
            .certs()
            .filter_map(|c| c.files.as_ref())
            .flat_map(|(chain, key)| [chain.clone(), key.clone()])
            .map(|path| {
                let time = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                (path, time)
            })
            .collect();
        files.sort();
        files
    }
}

/// A running certificate watch ([`TlsReloader::watch_files`],
/// [`TlsReloader::reload_on_signal`]); dropping it stops the watch.
#[derive(Debug)]
pub struct ReloadWatch(JoinHandle<()>);

impl Drop for ReloadWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}
