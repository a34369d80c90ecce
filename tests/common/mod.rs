//! Starts `chronicle serve` on a free loopback port with its own data directory.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `chronicle serve`; derefs to [`Api`], its HTTP client.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub api: Api,
}

/// The HTTP side of a server: cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `error.code` of an error reply (empty when there is none).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics with the whole reply unless the status is `status`.
    #[track_caller]
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected reply: {} {}",
            self.status, self.body
        );
        self
    }

    /// Panics unless this is a JSON error reply with `status` and `code`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "unexpected reply: {} {}",
            self.status,
            self.body
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "an error reply has a message: {}",
            self.body
        );
        self
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Server {
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data directory (e.g. after a crash).
    pub async fn start_in(dir: &Path) -> Self {
        let dir_arg = dir.display().to_string();
        Self::spawn(dir, &["serve", "--data-dir", &dir_arg], &[]).await
    }

    /// Starts a server on an existing data directory with extra `serve` arguments.
    pub async fn start_in_with(dir: &Path, extra: &[&str]) -> Self {
        let dir_arg = dir.display().to_string();
        let mut args = vec!["serve", "--data-dir", &dir_arg];
        args.extend_from_slice(extra);
        Self::spawn(dir, &args, &[]).await
    }

    /// The embedded server with extra `serve` arguments (its own temp data directory).
    pub async fn start_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let dir_arg = dir.display().to_string();
        let mut args = vec!["serve", "--data-dir", &dir_arg];
        args.extend_from_slice(extra);
        let mut s = Self::spawn(&dir, &args, &[]).await;
        s._tmp = Some(tmp);
        s
    }

    /// `chronicle serve --backend aws` with the given environment (resource names).
    pub async fn start_aws(env: &[(&str, String)]) -> Self {
        Self::spawn(Path::new("."), &["serve", "--backend", "aws"], env).await
    }

    async fn spawn(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_chronicle"))
            .args(args)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning chronicle serve");
        let mut server = Self {
            child,
            data_dir: dir.to_path_buf(),
            _tmp: None,
            api: Api {
                base: format!("http://127.0.0.1:{port}"),
                client: reqwest::Client::builder()
                    // Only a guard against a hung test, never a performance expectation.
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("an HTTP client"),
            },
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.client.get(server.url("/health")).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("chronicle serve exited before becoming healthy: {status}");
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running (it did not crash).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn reply(r: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Any method, optional raw body, extra headers; `Err` only when no reply came.
    pub async fn try_request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.try_request_bytes(method, path, body, &headers).await
    }

    /// Like [`Api::try_request`], with header values as raw bytes (they may be non-ASCII).
    pub async fn try_request_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &[u8])],
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        for (k, v) in headers {
            let value = reqwest::header::HeaderValue::from_bytes(v)
                .unwrap_or_else(|e| panic!("header {k}: {v:?} is not sendable: {e}"));
            req = req.header(*k, value);
        }
        Self::reply(req.send().await?).await
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_request(method.clone(), path, body, headers)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(reqwest::Method::GET, path, None, &[]).await
    }

    /// POSTs a raw body with extra headers.
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request(reqwest::Method::POST, path, Some(body.into()), headers)
            .await
    }

    /// Sends a command to `/accounts/{id}/commands`.
    pub async fn command(&self, id: &str, command: Value, headers: &[(&str, &str)]) -> Reply {
        self.post_raw(
            &format!("/accounts/{id}/commands"),
            command.to_string(),
            headers,
        )
        .await
    }

    /// Like [`Api::command`], but a lost connection is an `Err`, not a panic.
    pub async fn try_command(
        &self,
        id: &str,
        command: Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        self.try_request(
            reqwest::Method::POST,
            &format!("/accounts/{id}/commands"),
            Some(command.to_string().into_bytes()),
            headers,
        )
        .await
    }

    /// Polls the read model until `check` accepts it (eventual consistency).
    pub async fn eventually(&self, path: &str, check: impl Fn(&Reply) -> bool) -> Reply {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get(path).await;
            if check(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never matched; last: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every stored event of an account, following `next_from_version` page by page.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = 1;
        loop {
            let r = self
                .get(&format!(
                    "/accounts/{id}/events?from_version={from}&limit=1000"
                ))
                .await;
            r.expect_status(200);
            events.extend(
                r.body["events"]
                    .as_array()
                    .expect("an events array")
                    .clone(),
            );
            match r.body["next_from_version"].as_u64() {
                Some(next) => from = next,
                None => return events,
            }
        }
    }

    /// The state folded from the store (`?consistent=true`).
    pub async fn consistent(&self, id: &str) -> Reply {
        self.get(&format!("/accounts/{id}?consistent=true")).await
    }
}

/// The `version` of every event, in order.
pub fn versions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["version"].as_u64().expect("an event version"))
        .collect()
}

/// The sum of deposits minus withdrawals in a history.
pub fn folded_balance(events: &[Value]) -> i128 {
    events
        .iter()
        .map(|e| {
            let amount = i128::from(e["data"]["amount"].as_u64().unwrap_or(0));
            match e["event_type"].as_str() {
                Some("Deposited") => amount,
                Some("Withdrawn") => -amount,
                _ => 0,
            }
        })
        .sum()
}

/// Stores `events/fixtures/accounts-v1.json` (account `legacy-1`, recorded in March 2024, its
/// deposits at schema version 1) in a data directory, as an older Chronicle wrote them.
pub async fn store_v1_fixture(dir: &std::path::Path) -> Vec<Value> {
    use chronicle_kernel::{AppendRequest, EventEnvelope, EventStore, StreamId};
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../events/fixtures/accounts-v1.json"
    ))
    .expect("fixture file");
    let events: Vec<EventEnvelope> = serde_json::from_str(&text).expect("fixture envelopes");
    let store = chronicle_embedded::EmbeddedStore::open(dir).expect("store");
    store
        .append(&AppendRequest {
            stream: StreamId::new("accounts", "legacy-1"),
            expected_version: 0,
            events,
            idempotency: None,
            stored: Vec::new(),
            expected_known: false,
        })
        .await
        .expect("the fixture appends as stored");
    store.close();
    serde_json::from_str(&text).expect("fixture JSON")
}

/// A reply read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: Value,
}

impl RawReply {
    /// Whether the reply says `Connection: close`.
    pub fn says_close(&self) -> bool {
        self.head
            .lines()
            .any(|l| l.to_ascii_lowercase().replace(' ', "") == "connection:close")
    }

    /// Whether this is a JSON 413 `payload_too_large` with a message.
    pub fn is_too_large(&self) -> bool {
        let json = self.head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("content-type:") && l.contains("application/json")
        });
        self.status == 413
            && self.body["error"]["code"] == "payload_too_large"
            && self.body["error"]["message"].is_string()
            && json
    }

    /// Panics unless [`RawReply::is_too_large`].
    #[track_caller]
    pub fn expect_too_large(&self) -> &Self {
        assert!(self.is_too_large(), "not a JSON 413:\n{self}");
        self
    }
}

impl std::fmt::Display for RawReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n\n{}", self.head, self.body)
    }
}

/// Whether `response` holds a whole reply: the head and `Content-Length` bytes of body.
pub fn complete(response: &[u8]) -> bool {
    parse_reply(response).is_some()
}

/// The first whole reply in `response`, if it holds one.
pub fn parse_reply(response: &[u8]) -> Option<RawReply> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let body = &response[end + 4..];
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    // A 1xx (`100 Continue`) is a whole reply without a body.
    let length = if status < 200 {
        0
    } else {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })?
    };
    if body.len() < length {
        return None;
    }
    Some(RawReply {
        status,
        body: serde_json::from_slice(&body[..length]).unwrap_or(Value::Null),
        head,
    })
}

/// A `POST` of `body` framed by Content-Length or chunked (64 KiB chunks), with `headers`.
pub fn post_request(path: &str, body: &[u8], chunked: bool, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
    if chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (k, v) in headers {
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    if chunked {
        for chunk in body.chunks(64 * 1024) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(body);
    }
    request
}

/// A blocking connection to the server, with generous timeouts that only guard against a hung
/// test.
pub fn connect(api: &Api) -> std::net::TcpStream {
    let addr = api.base.trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    let timeout = Some(Duration::from_secs(120));
    stream.set_read_timeout(timeout).expect("a read timeout");
    stream.set_write_timeout(timeout).expect("a write timeout");
    stream
}

/// Sends `request` the way urllib, requests and many Java clients do: all of it with blocking
/// writes, and only then reads the reply. `Err` says what broke, and what was read.
pub fn write_then_read(
    stream: &mut std::net::TcpStream,
    request: &[u8],
) -> Result<RawReply, String> {
    use std::io::Write;
    stream
        .write_all(request)
        .map_err(|e| format!("writing the request: {e}"))?;
    read_reply(stream)
}

/// Reads one reply; a reset or an end after a whole reply is no error.
pub fn read_reply(stream: &mut std::net::TcpStream) -> Result<RawReply, String> {
    use std::io::Read;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(reply) = parse_reply(&response) {
            return Ok(reply);
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "the connection ended; read {:?}",
                    String::from_utf8_lossy(&response)
                ))
            }
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "reading the reply: {e}; read {:?}",
                    String::from_utf8_lossy(&response)
                ))
            }
        }
    }
}

/// Whether the server closed the connection: the next read ends (or is reset) with no data.
pub fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(n) => n == 0,
        // The read timeout is no close.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Runs `chronicle ARGS --data-dir DIR` to its end: (success, stdout, stderr).
pub fn chronicle(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running chronicle");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stored file's bytes as a reader of it would see them: an archive segment's frames
/// decompressed (lz4 would hide a plaintext from a byte search), an `.lz4` object unpacked,
/// anything else as it is. The raw bytes come first, so a search finds what is stored either
/// way.
pub fn readable(name: &str, bytes: &[u8]) -> Vec<u8> {
    use chronicle_kernel::archive::segment::{frame_bytes, index_of, unpack_frame};
    let mut out = bytes.to_vec();
    if let Ok(index) = index_of(name, bytes) {
        for frame in &index.frames {
            let raw = frame_bytes(name, bytes, frame)
                .and_then(|b| unpack_frame(name, frame, b))
                .unwrap_or_else(|e| panic!("segment {name}: {e}"));
            out.extend_from_slice(&raw);
        }
    } else if name.ends_with(".lz4") {
        if let Ok(raw) = lz4_flex::decompress_size_prepended(bytes) {
            out.extend_from_slice(&raw);
        }
    }
    out
}

/// Asserts an account's view or event data shows its personal fields erased: `null`, listed
/// under `erased`.
#[track_caller]
pub fn erased(v: &serde_json::Value) {
    use serde_json::{json, Value};
    assert_eq!(v["holder_name"], Value::Null, "{v}");
    assert_eq!(v["email"], Value::Null, "{v}");
    assert_eq!(v["erased"], json!(["email", "holder_name"]), "{v}");
}

/// An accounts `Open` with personal data (holder_name, email) of the subject `owner`.
pub fn open_with_personal_data(owner: &str, name: &str, email: &str) -> serde_json::Value {
    serde_json::json!({"type": "Open", "owner": owner, "holder_name": name, "email": email})
}
