//! Shared by the proxy bench binaries (included with `#[path]`): flag parsing, the 1 KiB
//! response body, the one-worker tokio runtime and the stop signal.

#![allow(dead_code)] // every binary uses a different part of it

use std::collections::HashMap;
use std::str::FromStr;

/// The body every server in the bench answers with.
pub(crate) static BODY: [u8; 1024] = [b'x'; 1024];

/// `--key value` / `--key=value` flags; `--help` prints the usage and exits.
pub(crate) struct Args {
    usage: &'static str,
    values: HashMap<String, String>,
}

impl Args {
    /// Parses the process arguments; exits with the usage on `--help` or a malformed flag.
    pub(crate) fn parse(usage: &'static str) -> Self {
        let mut values = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                fail(usage, &format!("unexpected argument {arg:?}"));
            };
            let (key, value) = match flag.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => match args.next() {
                    Some(v) => (flag.to_owned(), v),
                    None => fail(usage, &format!("--{flag} needs a value")),
                },
            };
            values.insert(key, value);
        }
        Args { usage, values }
    }

    /// The flag's value, or `default`.
    pub(crate) fn get(&self, key: &str, default: &str) -> String {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    /// The flag's value if given.
    pub(crate) fn opt(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned()
    }

    /// The flag parsed as `T`, or `default`; exits with the usage when it does not parse.
    pub(crate) fn parse_or<T: FromStr>(&self, key: &str, default: T) -> T {
        match self.values.get(key) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(self.usage, &format!("--{key}: cannot parse {v:?}"))),
        }
    }
}

fn fail(usage: &str, msg: &str) -> ! {
    eprintln!("error: {msg}\nusage: {usage}");
    std::process::exit(2)
}

/// The runtime every server in the bench runs on: multi-thread with `workers` worker threads
/// (1 by default, so the process can be pinned to one CPU), or current-thread for `0`.
pub(crate) fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

/// The error type of the binaries' `main`.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The listener's TLS settings from `--tls-cert` and `--tls-key` (both or neither).
pub(crate) fn tls_config(args: &Args) -> Result<Option<pingora_tower::tls::TlsConfig>, BoxError> {
    use pingora_tower::tls::{CertSet, ServerCert, TlsConfig};
    match (args.opt("tls-cert"), args.opt("tls-key")) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let cert = ServerCert::from_pem_files(cert, key)?;
            Ok(Some(TlsConfig::new(CertSet::new(cert))))
        }
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}
