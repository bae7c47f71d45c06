//! A real `redis-server` for a test: started on a free port of 127.0.0.1, with nothing saved to
//! disk, killed (and its directory removed) when dropped. It can be killed and restarted on the
//! same port to test what a limiter does while Redis is away.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a server may take to answer its first `PING`.
const START_GUARD: Duration = Duration::from_secs(10);

/// A running (or stopped, after [`kill`](Self::kill)) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not answer within ten seconds.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server on a free port with extra command-line settings (e.g.
    /// `["--cluster-enabled", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pingora-tower-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL, as a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server dies on SIGKILL as well; nothing else to undo.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)); its data is
    /// gone, as after a crash without persistence.
    ///
    /// # Panics
    /// When it does not answer within ten seconds.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let deadline = Instant::now() + START_GUARD;
        while Instant::now() < deadline {
            if self.command(&["PING"]).is_some_and(|r| r == "+PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, like a Redis
    /// stuck on a slow command or a network that drops packets.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal} redis-server");
        }
    }

    /// Runs one command and returns the reply's first line, or the whole bulk string for a
    /// bulk reply (`None` when the server cannot be reached).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command_at(self.addr(), args)
    }

    /// How many times the server ran `command` (lowercase, e.g. `"evalsha"`), from
    /// `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self
            .command(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Script runs the server counted: `EVALSHA` plus `EVAL`.
    pub fn script_calls(&self) -> u64 {
        self.command_calls("evalsha") + self.command_calls("eval")
    }

    /// Resets the server's command statistics.
    pub fn reset_stats(&self) {
        self.command(&["CONFIG", "RESETSTAT"]);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one command on the Redis at `addr` and returns the reply's first line, or the whole
/// bulk string for a bulk reply (`None` when it cannot be reached).
pub fn command_at(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(START_GUARD)).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for arg in args {
        req.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(req.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$') {
        let len: usize = len.parse().ok()?;
        let mut bulk = vec![0; len + 2];
        reader.read_exact(&mut bulk).ok()?;
        bulk.truncate(len);
        return String::from_utf8(bulk).ok();
    }
    Some(line)
}

/// A port nothing listens on now (bound to `:0`, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
