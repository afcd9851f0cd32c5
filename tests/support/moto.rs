//! A real `moto_server` (PyPI `moto[server]`, a local CloudWatch-compatible endpoint) on a free
//! loopback port, killed on drop. Found via $MOTO_SERVER, then ./.venv/bin/moto_server (made by
//! scripts/test), then PATH; a test that cannot find it fails with the install hint.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wsctl::metrics::cloudwatch::ClientOptions;

/// moto imports a lot of Python on start; 30 s covers a cold cache on a busy 2-core machine.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);

pub const MOTO_HINT: &str = "moto_server not found. Install it with \
    `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'` (or run `scripts/test`), \
    or point $MOTO_SERVER at the binary.";

/// Dummy credentials and region moto accepts.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
pub const REGION: &str = "us-east-1";

pub fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "$MOTO_SERVER={} is not a file. {MOTO_HINT}", p.display());
        return p;
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("moto_server")).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{MOTO_HINT}"))
}

/// One moto_server process.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_on(super::free_port())
    }

    /// On a given port (a test that first talks to a dead endpoint, then brings it up).
    pub fn start_on(port: u16) -> Moto {
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server: {e}. {MOTO_HINT}"));
        let mut moto = Moto { port, child };
        let deadline = Instant::now() + MOTO_START_TIMEOUT;
        while !moto.answers() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited with {status} before answering on port {port}");
            }
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within {MOTO_START_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// Whether an HTTP request gets any answer.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/"))
    }

    pub fn endpoint(&self) -> String {
        endpoint(self.port)
    }

    /// SDK options for this server with dummy credentials set on the SDK config (not the process
    /// environment: tests run in parallel).
    pub fn options(&self) -> ClientOptions {
        options(self.port)
    }
}

pub fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub fn options(port: u16) -> ClientOptions {
    ClientOptions {
        region: Some(REGION.to_string()),
        endpoint: Some(endpoint(port)),
        credentials: Some(aws_sdk_cloudwatch::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "wsctl-tests")),
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
