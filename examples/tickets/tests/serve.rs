//! The tickets domain end to end through the team's own binary, `tickets serve`: the triage
//! reaction assigns urgent tickets, the list read model finds them by agent, bad commands are
//! refused naming the field, `/openapi.json` documents the ticket routes, and the command line's
//! other subcommands work on the team's binary.

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tickets serve` on a free loopback port with its own data directory.
struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A reply: status, headers and JSON body (`null` when there is none).
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    #[track_caller]
    fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected reply: {}", self.body);
        &self.body
    }

    /// Panics unless this is an error reply with `status` and `code`; returns its message.
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str) -> &str {
        assert_eq!(
            (self.status, self.body["error"]["code"].as_str()),
            (status, Some(code)),
            "unexpected reply: {}",
            self.body
        );
        self.body["error"]["message"].as_str().expect("a message")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tickets"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning tickets serve");
        let mut server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                // Only a guard against a hung test.
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = server.client.get(server.url("/health")).send().await {
                if r.status().is_success() {
                    return server;
                }
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("tickets serve exited before becoming healthy: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = req.send().await.expect("a reply");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("a body");
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// POSTs `command` to `/tickets/{id}/commands` with extra headers.
    async fn command(&self, id: &str, command: Value, headers: &[(&str, &str)]) -> Reply {
        let mut req = self
            .client
            .post(self.url(&format!("/tickets/{id}/commands")))
            .header("content-type", "application/json")
            .body(command.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req).await
    }

    /// Polls `path` until `check` accepts the reply (read models are eventually consistent).
    async fn eventually(&self, path: &str, check: impl Fn(&Reply) -> bool) -> Reply {
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

    /// The triage reaction's status once it has handled every event in the store.
    async fn triage_at_rest(&self) -> Value {
        self.eventually("/admin/reactions", |r| {
            let triage = &r.body["reactions"][0];
            assert!(triage["failure"].is_null(), "the reaction failed: {triage}");
            triage["lag"]["events"] == 0
        })
        .await
        .body["reactions"][0]
            .clone()
    }

    /// SIGKILL; the store is crash-safe.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `tickets ARGS --data-dir DIR` to its end: (success, stdout, stderr).
fn tickets(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tickets"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tickets");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn open(priority: &str) -> Value {
    json!({"type": "Open", "title": "Printer on fire", "customer": "c-1", "priority": priority})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_ticket_goes_to_on_call_and_is_listed_by_agent() {
    let s = Server::start().await;
    let r = s.command("t-1", open("urgent"), &[]).await;
    let opened = r.expect(200)["events"][0].clone();
    assert_eq!(opened["event_type"], "TicketOpened");
    assert_eq!(opened["schema_version"], 2);
    s.command("t-2", open("low"), &[]).await.expect(200);

    let t1 = s
        .eventually("/tickets/t-1", |r| r.body["agent"] == "on-call")
        .await;
    assert_eq!(t1.body["status"], "open", "{}", t1.body);
    assert_eq!(t1.body["version"], 2);
    let listed = s
        .eventually("/tickets?agent=on-call", |r| {
            r.body["tickets"].as_array().is_some_and(|t| t.len() == 1)
        })
        .await;
    assert_eq!(listed.body["tickets"][0]["id"], "t-1");

    // The reaction's command carries the opening as its cause and a key derived from it.
    let history = s.get("/tickets/t-1/events").await;
    let assigned = &history.expect(200)["events"][1];
    assert_eq!(assigned["event_type"], "TicketAssigned");
    assert_eq!(assigned["metadata"]["causation_id"], opened["event_id"]);
    assert!(
        assigned["metadata"]["idempotency_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ticket_triage:")),
        "{assigned}"
    );

    // The low-priority ticket is left alone.
    let triage = s.triage_at_rest().await;
    assert_eq!(triage["name"], "ticket_triage");
    assert_eq!(
        triage["subscriptions"],
        json!([["tickets", "TicketOpened"]])
    );
    assert_eq!(triage["refused"], 0);
    let t2 = s.get("/tickets/t-2?consistent=true").await;
    assert_eq!(t2.expect(200)["agent"], Value::Null);

    // Reassigned by hand: the list follows.
    s.command("t-1", json!({"type": "Assign", "agent": "alice"}), &[])
        .await
        .expect(200);
    s.eventually("/tickets?agent=alice", |r| {
        r.body["tickets"][0]["id"] == "t-1"
    })
    .await;
    s.eventually("/tickets?agent=on-call", |r| r.body["tickets"] == json!([]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_refused_naming_the_field_and_refusals_have_codes() {
    let s = Server::start().await;
    let cases = [
        (
            json!({"type": "Open", "title": " ", "customer": "c-1"}),
            "title",
        ),
        (
            json!({"type": "Open", "title": "t", "customer": "a b"}),
            "customer",
        ),
        (json!({"type": "Open", "customer": "c-1"}), "title"),
        (
            json!({"type": "Open", "title": "t", "customer": "c-1", "agent": "x"}),
            "agent",
        ),
        (json!({"type": "Reopen"}), "Reopen"),
    ];
    for (body, field) in cases {
        let r = s.command("t-bad", body.clone(), &[]).await;
        let message = r.expect_error(400, "invalid_command");
        assert!(message.contains(field), "{body}: {message}");
    }
    s.get("/tickets/t-bad").await.expect_error(404, "not_found");

    let assign = json!({"type": "Assign", "agent": "alice"});
    s.command("t-1", assign.clone(), &[])
        .await
        .expect_error(404, "ticket_not_found");
    s.command("t-1", open("normal"), &[]).await.expect(200);
    s.command("t-1", open("normal"), &[])
        .await
        .expect_error(422, "ticket_already_open");
    // If-Match: only at the version the client saw.
    s.command("t-1", assign.clone(), &[("If-Match", "7")])
        .await
        .expect_error(409, "version_conflict");
    // Idempotency-Key: a retry gets the first answer, and nothing is stored twice.
    let first = s
        .command("t-1", assign.clone(), &[("Idempotency-Key", "k-1")])
        .await;
    let retry = s
        .command("t-1", assign, &[("Idempotency-Key", "k-1")])
        .await;
    assert_eq!(retry.expect(200), first.expect(200));
    assert_eq!(
        retry
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let closing = json!({"type": "Close", "resolution": "Replaced it"});
    s.command("t-1", closing.clone(), &[("If-Match", "2")])
        .await
        .expect(200);
    s.command("t-1", closing, &[])
        .await
        .expect_error(422, "ticket_closed");
    let history = s.get("/tickets/t-1/events").await;
    let types: Vec<&str> = history.expect(200)["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("a type"))
        .collect();
    assert_eq!(types, ["TicketOpened", "TicketAssigned", "TicketClosed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_the_ticket_routes() {
    let s = Server::start().await;
    let r = s.get("/openapi.json").await;
    let doc = r.expect(200);
    let post = &doc["paths"]["/tickets/{id}/commands"]["post"];
    let schema = post["requestBody"]["content"]["application/json"]["schema"].to_string();
    for word in [
        "Open",
        "Assign",
        "Close",
        "#/components/schemas/Priority",
        "^[A-Za-z0-9._:-]{1,128}$",
    ] {
        assert!(
            schema.contains(word),
            "the command schema has {word}: {schema}"
        );
    }
    let priorities = doc["components"]["schemas"]["Priority"].to_string();
    assert!(priorities.contains("urgent"), "{priorities}");
    let refusals = post["responses"]["422"]["description"]
        .as_str()
        .expect("422");
    assert!(refusals.contains("ticket_closed"), "{refusals}");
    let not_found = post["responses"]["404"]["description"]
        .as_str()
        .expect("404");
    assert!(not_found.contains("ticket_not_found"), "{not_found}");
    assert!(doc["paths"]["/tickets/{id}"]["get"].is_object());
    let list = doc["paths"]["/tickets"]["get"].to_string();
    assert!(list.contains("agent"), "{list}");
    assert!(doc["components"]["schemas"]["TicketView"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_binary_has_the_command_line_subcommands() {
    let mut s = Server::start().await;
    s.command("t-1", open("urgent"), &[]).await.expect(200);
    s.triage_at_rest().await;
    s.stop();
    let dir = s.dir.path();

    let (ok, out, err) = tickets(dir, &["history", "tickets", "t-1", "--json"]);
    assert!(ok, "{err}");
    let history: Value = serde_json::from_str(&out).expect("JSON history");
    let text = history.to_string();
    assert!(
        text.contains("TicketOpened") && text.contains("TicketAssigned"),
        "{out}"
    );
    let (ok, out, err) = tickets(dir, &["state", "tickets", "t-1", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("on-call"), "{out}");
    let (ok, out, err) = tickets(dir, &["verify", "--all"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = tickets(dir, &["rebuild", "tickets_by_agent"]);
    assert!(ok, "{err}");
}
