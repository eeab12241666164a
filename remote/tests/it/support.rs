//! A local S3 server (moto) for the tests, the skip protocol, and images to
//! store in it.
//!
//! Each [`Moto`] runs `moto_server` on a free loopback port, through a small
//! shell wrapper that kills it when its standard input closes: when the
//! `Moto` is dropped, and also when the test binary dies in any way, so no
//! server outlives the tests. Nothing here reaches beyond 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use memimg::{Codec, Key, RegionInfo, RegionKind, Writer, WriterOptions};
use memimg_remote::{S3Options, S3Url};

/// The skip protocol: a test that cannot run here says so. With
/// `MEMIMG_REQUIRE_ALL` set (CI), a skip is a failure.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("MEMIMG_REQUIRE_ALL").is_some_and(|v| !v.is_empty()) {
        panic!("would skip: {why}");
    }
    if let Some(log) = std::env::var_os("MEMIMG_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}\t{why}");
        }
    }
    eprintln!("skipped: {why}");
}

/// The `moto_server` command: on the PATH, or where a per-user pip install
/// puts it (`~/.local/bin`), as scripts/setup.sh may.
fn moto_command() -> Option<&'static str> {
    static CMD: OnceLock<Option<String>> = OnceLock::new();
    CMD.get_or_init(|| {
        let home = std::env::var("HOME").unwrap_or_default();
        [
            "moto_server".to_string(),
            format!("{home}/.local/bin/moto_server"),
        ]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
    .as_deref()
}

/// Why moto cannot run here, if it cannot.
fn moto_missing() -> Option<&'static str> {
    moto_command()
        .is_none()
        .then_some("moto_server is not installed (scripts/setup.sh installs it)")
}

/// A running moto server.
pub struct Moto {
    wrapper: Child,
    stdin: Option<ChildStdin>,
    /// moto's own process id (not its wrapper's).
    pub pid: u32,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Credentials that work (moto accepts any unless auth is on).
    pub key_id: String,
    pub secret: String,
}

/// Access keys moto accepts when authentication is off.
const ANY_KEY: &str = "testing";

impl Moto {
    /// Starts a server of its own for `test`, or skips the test.
    pub fn start(test: &str) -> Option<Moto> {
        if let Some(why) = moto_missing() {
            skip(test, why);
            return None;
        }
        Some(Moto::spawn(&[]))
    }

    /// The server shared by the tests that do not stop it or turn on
    /// authentication; each test uses a bucket of its own.
    pub fn shared(test: &str) -> Option<&'static Moto> {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        if let Some(why) = moto_missing() {
            skip(test, why);
            return None;
        }
        Some(SHARED.get_or_init(|| Moto::spawn(&[])))
    }

    /// Starts a server that checks signatures against its IAM users: after
    /// the set-up requests made here (a bucket, a user allowed everything, and
    /// its access key), every request must be signed with that key.
    pub fn start_with_auth(test: &str, bucket: &str) -> Option<Moto> {
        if let Some(why) = moto_missing() {
            skip(test, why);
            return None;
        }
        // Four requests go unchecked: CreateBucket, CreateUser,
        // PutUserPolicy, CreateAccessKey.
        let mut m = Moto::spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
        m.create_bucket(bucket);
        let iam = |body: &str| {
            let auth = "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00";
            let (status, text) = m.http(
                "POST",
                "/",
                &[
                    ("Authorization", auth),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                body.as_bytes(),
            );
            assert_eq!(status, 200, "IAM set-up failed: {text}");
            text
        };
        iam("Action=CreateUser&UserName=tester&Version=2010-05-08");
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        iam(&format!(
            "Action=PutUserPolicy&UserName=tester&PolicyName=all&PolicyDocument={policy}&Version=2010-05-08"
        ));
        let key = iam("Action=CreateAccessKey&UserName=tester&Version=2010-05-08");
        m.key_id = xml_values(&key, "AccessKeyId").remove(0);
        m.secret = xml_values(&key, "SecretAccessKey").remove(0);
        Some(m)
    }

    /// Starts a server on `port` without waiting for it to answer (for a
    /// test of a store that comes up while a client retries), or skips.
    pub fn start_at(test: &str, port: u16) -> Option<Moto> {
        if let Some(why) = moto_missing() {
            skip(test, why);
            return None;
        }
        Some(Moto::launch(port, &[]))
    }

    fn spawn(env: &[(&str, &str)]) -> Moto {
        for _attempt in 0..3 {
            let mut m = Moto::launch(free_port(), env);
            if m.wait_ready(Duration::from_secs(60)) {
                return m;
            }
            m.stop();
        }
        panic!("moto_server did not start on a free loopback port in three tries");
    }

    fn launch(port: u16, env: &[(&str, &str)]) -> Moto {
        {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(r#""$1" -H 127.0.0.1 -p "$0" >/dev/null 2>&1 & echo $!; read _; kill -9 $! 2>/dev/null; wait"#)
                .arg(port.to_string())
                .arg(moto_command().expect("checked by the caller"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut wrapper = cmd.spawn().expect("starting sh for moto_server");
            let mut line = String::new();
            BufReader::new(wrapper.stdout.take().expect("piped stdout"))
                .read_line(&mut line)
                .expect("reading moto's pid");
            let pid: u32 = line.trim().parse().expect("moto's pid");
            let stdin = wrapper.stdin.take();
            Moto {
                wrapper,
                stdin,
                pid,
                port,
                endpoint: format!("http://127.0.0.1:{port}"),
                key_id: ANY_KEY.into(),
                secret: ANY_KEY.into(),
            }
        }
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if Path::new(&format!("/proc/{}", self.pid)).exists() {
                if let Ok((200, _)) = self.try_http("GET", "/moto-api/", &[], b"") {
                    return true;
                }
            } else {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Settings for the store's clients: this endpoint, working credentials,
    /// and few retries so that failure tests end quickly. The request
    /// timeout is long: on a loaded machine moto (one Python process) can
    /// take many seconds to answer.
    pub fn options(&self) -> S3Options {
        S3Options::default()
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_credentials(&self.key_id, &self.secret)
            .with_retries(2)
            .with_retry_timeout(Duration::from_secs(10))
            .with_request_timeout(Duration::from_secs(180))
            .with_connect_timeout(Duration::from_secs(2))
    }

    /// Creates a bucket (unsigned request: moto accepts it when
    /// authentication is off, and it is one of the set-up requests when on).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, text) = self.http("PUT", &format!("/{bucket}"), &[], b"");
        assert_eq!(status, 200, "creating bucket {bucket}: {text}");
    }

    /// The keys of the objects in `bucket` (asked of the server directly,
    /// past the code under test).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, text) = self.http("GET", &format!("/{bucket}?list-type=2"), &[], b"");
        assert_eq!(status, 200, "listing {bucket}: {text}");
        xml_values(&text, "Key")
    }

    /// The multipart uploads in `bucket` that were neither completed nor
    /// aborted.
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let (status, text) = self.http("GET", &format!("/{bucket}?uploads"), &[], b"");
        assert_eq!(status, 200, "listing uploads of {bucket}: {text}");
        xml_values(&text, "UploadId")
    }

    /// Stores `data` under `key` with one plain PUT, past the code under test.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let (status, text) = self.http("PUT", &format!("/{bucket}/{key}"), &[], data);
        assert_eq!(status, 200, "putting {bucket}/{key}: {text}");
    }

    /// The object's bytes, with one plain GET, past the code under test.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self.http_bytes("GET", &format!("/{bucket}/{key}"), &[], b"");
        (status == 200).then_some(body)
    }

    /// Kills the server at once (SIGKILL): connections are cut, the port
    /// refuses new ones, and its in-memory state is gone.
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .status();
        let t = Instant::now();
        while Path::new(&format!("/proc/{}/status", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/status", self.pid))
                .unwrap_or_default()
                .contains("State:\tZ")
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        // Closing stdin makes the wrapper kill moto and exit.
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }

    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (s, b) = self.http_bytes(method, path, headers, body);
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    fn http_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        self.try_http_bytes(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} to moto: {e}"))
    }

    fn try_http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let (s, b) = self.try_http_bytes(method, path, headers, body)?;
        Ok((s, String::from_utf8_lossy(&b).into_owned()))
    }

    /// One HTTP/1.1 request with `Connection: close`; the body is read to
    /// the end of the stream.
    fn try_http_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        // moto wants an Authorization header to treat a request as the
        // bucket owner's (an anonymous overwrite is refused); with
        // authentication off it does not check the signature.
        if !headers.iter().any(|(k, _)| *k == "Authorization") {
            req.push_str("Authorization: AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let split = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no end of headers"))?;
        let head = String::from_utf8_lossy(&resp[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        let mut body = resp[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        Ok((status, body))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

use std::path::Path;

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < nl + 2 + n {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[(nl + 4 + n).min(b.len())..];
    }
    out
}

/// The text of every `<tag>…</tag>` in `xml`.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(s) = rest.find(&open) {
        let after = &rest[s + open.len()..];
        let Some(e) = after.find(&close) else { break };
        out.push(after[..e].to_string());
        rest = &after[e + close.len()..];
    }
    out
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local address").port()
}

/// A bucket name for a test: lower case, digits and dashes.
pub fn bucket_for(test: &str) -> String {
    let mut b: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    b.truncate(50);
    format!("t-{}", b.trim_matches('-'))
}

pub fn url(bucket: &str, key: &str) -> S3Url {
    S3Url::parse(&format!("s3://{bucket}/{key}")).expect("a valid test URL")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Memory contents of `len` bytes (a multiple of 4096): a mix of random
/// pages, zero pages and text-like pages, so that zstd has work and zero
/// runs exist.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; len];
    for (i, page) in v.chunks_mut(4096).enumerate() {
        match rng.next() % 4 {
            0 => {}
            1 => rng.fill(page),
            _ => {
                let word = format!("page {i} word {} ", rng.next() % 1000);
                for (j, b) in page.iter_mut().enumerate() {
                    *b = word.as_bytes()[j % word.len()];
                }
            }
        }
    }
    v
}

/// The kinds of image the round trips cover.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Plain,
    Zstd,
    ZstdEncrypted,
}

pub fn key() -> Key {
    Key::raw([7u8; 32])
}

pub fn writer_options(kind: Kind) -> WriterOptions {
    let o = WriterOptions::new().workers(2);
    match kind {
        Kind::Plain => o.codec(Codec::None),
        Kind::Zstd => o.codec(Codec::Zstd(1)),
        Kind::ZstdEncrypted => o.codec(Codec::Zstd(1)).key(key()),
    }
}

/// The regions of a test image: (start address, contents).
pub fn regions(total: usize, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let a = (total / 4) & !4095;
    vec![
        (0x10_0000, content(a, seed)),
        (0x4000_0000, content(total - a, seed + 1)),
    ]
}

/// Writes the regions as an image into `out`.
pub fn write_image<W: Write>(out: W, kind: Kind, regions: &[(u64, Vec<u8>)]) -> W {
    let mut w = Writer::new(out, writer_options(kind)).expect("starting the writer");
    for (addr, data) in regions {
        w.add_region(
            RegionInfo::new(*addr, data.len() as u64)
                .kind(RegionKind::Anonymous)
                .name("test"),
            data,
        )
        .expect("adding a region");
    }
    w.finish().expect("finishing the image").0
}
