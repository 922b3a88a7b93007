//! `ferrotune ui` as an operator meets it: a home with a real run (tiny model, trained and
//! evaluated by the binary), a promotion waiting for approval, a knowledge base and a run folder
//! with a hostile name; every page fetched over HTTP; what users wrote comes back escaped; the
//! live curve's event stream follows metrics.jsonl; approving needs the admin key (403 without,
//! the alias moves with it, as `ferrotune registry show` reports); the kill switch goes through
//! its confirmation page; every write is in the audit log as `ui:NAME`.
//!
//! With `FERROTUNE_CHECK_UI_BROWSER=1`, `scripts/ui/browser_check.py` then drives headless
//! Chromium over the DevTools protocol through the same pages (no script may run from the
//! hostile names, the curve updates live, a keyboard approval moves an alias) and saves
//! screenshots to `$FERROTUNE_UI_SCREENSHOTS` (default: a temporary folder).

mod home;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use home::{Home, text};

const KEY: &str = "test-admin-key-0123456789";
/// A run folder's name (a file name cannot hold `/`, so no `</script>`: the config and a
/// document carry that one).
const HOSTILE: &str = "<img src=x onerror=alert(1)>";

/// The dashboard process, stopped when dropped.
struct Ui {
    child: Child,
    addr: String,
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ui {
    fn start(h: &Home, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
            .args([
                "ui",
                "--port",
                "0",
                "--runs",
                &h.s("runs"),
                "--runs",
                &h.s("missing-runs"),
                "--admin-key-file",
                &h.s("admin.key"),
            ])
            .args(extra)
            .current_dir(h.dir.path())
            .env("FERROTUNE_HOME", h.path("home"))
            .env("USER", "operator")
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ui] {line}");
                if let Some(rest) = line.strip_prefix("dashboard on http://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        });
        let addr =
            rx.recv_timeout(Duration::from_secs(30)).context("the dashboard did not say where it listens")?;
        Ok(Self { child, addr })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request (the answer ends when the server closes the connection).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {addr}\r\n");
    }
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        req += &format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", b.len());
    }
    req += "\r\n";
    req += body.unwrap_or("");
    s.write_all(req.as_bytes())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").with_context(|| format!("not HTTP: {raw}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp { status, headers, body: body.to_string() })
}

fn get(ui: &Ui, path: &str) -> anyhow::Result<Resp> {
    http(&ui.addr, "GET", path, &[], None)
}

/// GET that must answer 200 and hold every one of `want`.
fn page(ui: &Ui, path: &str, want: &[&str]) -> anyhow::Result<String> {
    let r = get(ui, path)?;
    ensure!(r.status == 200, "GET {path}: {}\n{}", r.status, r.body);
    for w in want {
        ensure!(r.body.contains(w), "GET {path}: `{w}` missing from\n{}", r.body);
    }
    Ok(r.body)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Nothing a user wrote may come back as markup.
fn assert_escaped(body: &str, what: &str) {
    for raw in ["<script>alert", "<img src=x", "<b>bold", "onerror=alert(1)>"] {
        assert!(!body.contains(raw), "{what}: `{raw}` unescaped in\n{body}");
    }
}

fn home_with_a_run() -> anyhow::Result<Home> {
    let h = Home::new()?;
    ferrotune_model::testing::write_tiny_model(&h.path("tiny"))?;
    let (mut train, mut eval) = (String::new(), String::new());
    for i in 0..16 {
        let q = format!("Spell {i} backwards.");
        let a = format!("[ok] {}", i.to_string().chars().rev().collect::<String>());
        let row = serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string();
        if i < 12 { &mut train } else { &mut eval }.push_str(&(row + "\n"));
    }
    std::fs::write(h.path("train.jsonl"), train)?;
    std::fs::write(h.path("eval.jsonl"), eval)?;
    std::fs::write(h.path("admin.key"), format!("{KEY}\n"))?;
    // Two runs (support@1 and @2), each evaluated into its own eval/ folder.
    for (run, lr, seed) in [("a", "3e-3", "1"), ("b", "1e-3", "2")] {
        h.ok(
            "alice",
            &[
                "train",
                "--model",
                &h.s("tiny"),
                "--data",
                "train.jsonl",
                "--eval-data",
                "eval.jsonl",
                "--out",
                &format!("runs/{run}"),
                "--max-steps",
                "12",
                "--batch-size",
                "4",
                "--lr",
                lr,
                "--seed",
                seed,
                "--eval-steps",
                "3",
                "--save-steps",
                "6",
                "--logging-steps",
                "1",
                "--quiet",
                "--register-as",
                "support",
            ],
        )?;
        h.ok(
            "alice",
            &[
                "eval",
                "--model",
                &h.s("tiny"),
                "--data",
                "eval.jsonl",
                "--adapter",
                &format!("runs/{run}/adapter"),
                "--max-tokens",
                "6",
                "--metrics",
                "rougeL,loss",
                "--resamples",
                "50",
            ],
        )?;
    }
    // A run folder named like markup, whose config holds markup too.
    let evil = h.path("runs").join(HOSTILE);
    std::fs::create_dir_all(&evil)?;
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.path("runs/a/config.json"))?)?;
    cfg["data"] = "<script>alert(2)</script>".into();
    std::fs::write(evil.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    std::fs::copy(h.path("runs/a/metrics.jsonl"), evil.join("metrics.jsonl"))?;
    // champion needs an approval by someone else (the built-in rule); canary too, by policy.
    std::fs::write(
        h.path("home/policy.toml"),
        "[alias.champion]\napprovers = 1\n\n[alias.canary]\napprovers = 1\n",
    )?;
    let p = h.ok(
        "alice",
        &["registry", "promote", "support", "1", "--to", "champion", "--reason", "first release"],
    )?;
    ensure!(p.contains("request 1"), "{p}");
    let p =
        h.ok("alice", &["registry", "promote", "support", "1", "--to", "canary", "--reason", "try it"])?;
    ensure!(p.contains("request 2"), "{p}");
    h.ok("alice", &["audit", "checkpoint"])?;
    // A knowledge base with a document holding HTML (synthetic vectors: BM25 needs no embedder).
    let mut w = ferrotune_rag::Writer::open(&h.path("home/kb/docs"), None, 8)?;
    let doc = ferrotune_rag::SourceDoc::new(
        "<b>bold</b>.txt".into(),
        "test".into(),
        ferrotune_rag::DocKind::Text,
        "Refunds are paid within 30 days. <script>alert(3)</script> <img src=x onerror=alert(4)>".into(),
        serde_json::Map::new(),
    );
    w.ingest_with_vectors(&[doc], &mut |_| {
        let mut v = vec![0.0; 8];
        v[0] = 1.0;
        v
    })?;
    Ok(h)
}

/// A stand-in for a server's /metrics, answering one request.
fn fake_metrics_server() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = "# HELP x\nferrotune:prompt_tokens_total{model=\"tiny\",adapter=\"\"} 1234\nferrotune:num_requests_running{model=\"tiny\"} 3\n\
                        ferrotune:time_to_first_token_seconds_sum{model=\"tiny\"} 0.9\nferrotune:time_to_first_token_seconds_count{model=\"tiny\"} 3\n";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(addr)
}

/// Reads the run's event stream until `want` shows up in it.
fn events_until(
    ui: &Ui,
    path: &str,
    want: &str,
    after: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(&ui.addr)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", ui.addr)?;
    let mut got = String::new();
    let mut after = Some(after);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
        if got.contains("event: summary")
            && let Some(f) = after.take()
        {
            f()?;
        }
        if after.is_none() && got.contains(want) {
            return Ok(got);
        }
    }
    bail!("`{want}` never came on {path}:\n{got}")
}

fn form_value(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &body[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

#[test]
fn the_dashboard_shows_every_page_escapes_what_users_wrote_and_writes_only_with_the_admin_key()
-> anyhow::Result<()> {
    let h = home_with_a_run()?;
    let ui = Ui::start(&h, &[])?;

    // Runs: both folders listed, the hostile one escaped, the missing --runs folder named.
    let runs = page(
        &ui,
        "/",
        &[
            "/runs/0/a",
            "succeeded",
            "train.jsonl",
            "tiny",
            "&lt;img src=x onerror=alert(1)&gt;",
            "missing-runs does not exist",
        ],
    )?;
    assert_escaped(&runs, "runs");
    ensure!(
        runs.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "the hostile config value is escaped:\n{runs}"
    );

    // A run: the curve (SVG), config, checkpoints, the registry record, the evaluation link.
    page(
        &ui,
        "/runs/0/a",
        &[
            "<svg",
            "eval loss",
            "lora_r",
            "Checkpoints",
            "registers as",
            "data-events=\"/runs/0/a/events\"",
            "Evaluation of this run",
        ],
    )?;
    let evil = page(
        &ui,
        &format!("/runs/0/{}", enc(HOSTILE)),
        &["Run &lt;img src=x onerror=alert(1)&gt;", "&lt;script&gt;alert(2)&lt;/script&gt;"],
    )?;
    assert_escaped(&evil, "hostile run page");

    // Live: the event stream sends the curve, then again when metrics.jsonl grows.
    let metrics = h.path("runs/a/metrics.jsonl");
    let got = events_until(&ui, "/runs/0/a/events", "step 13 ", || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&metrics)?;
        writeln!(f, "{{\"step\":13,\"epoch\":4.33,\"loss\":2.5,\"lr\":0.0003,\"tokens_per_sec\":900.0}}")?;
        Ok(())
    })?;
    ensure!(got.contains("event: curve") && got.contains("<svg"), "{got}");

    // Compare: overlaid curves, the config difference (data), eval deltas with intervals.
    let cmp = page(
        &ui,
        &format!("/compare?run=0/a&run=0/b&run=0/{}", enc(HOSTILE)),
        &["<svg", "Config differences", "rougeL", "Δ vs base", "b − a", "no eval/eval.json"],
    )?;
    ensure!(cmp.contains("<td>lr</td>") && cmp.contains("<td>seed</td>"), "lr and seed differ:\n{cmp}");
    assert_escaped(&cmp, "compare");
    let r = get(&ui, "/compare?run=0/a")?;
    ensure!(r.status == 400, "one run is not a comparison: {}", r.status);

    // Evaluations: listed; the page has intervals and the differing rows; only known files open.
    let evals = page(&ui, "/evals", &["eval.json", "base, "])?;
    let eval_path = h.path("runs/a/eval/eval.json").canonicalize()?;
    let q = format!("/eval?file={}", enc(&eval_path.display().to_string()));
    ensure!(evals.contains(&eval_path.display().to_string()), "{evals}");
    page(&ui, &q, &["rougeL", "loss", "[", "Δ vs base", "Rows where the answers differ"])?;
    ensure!(get(&ui, "/eval?file=%2Fetc%2Fpasswd")?.status == 404, "only evaluations on record open");

    // Registry: the queue, versions, history, lineage.
    let reg = page(
        &ui,
        "/registry",
        &["Approval queue", "support@1", "champion", "canary", "log in to decide", "Disable support@1"],
    )?;
    ensure!(!reg.contains("name=\"csrf\""), "no write forms before logging in");
    page(&ui, "/registry/history/support", &["register", "promote-requested", "alice"])?;
    page(
        &ui,
        &format!("/registry/version/{}", enc("support@1")),
        &["Lineage", "adapter_model.safetensors", "train.jsonl"],
    )?;

    // Audit: recent entries, search, verification of the latest checkpoint.
    page(&ui, "/audit", &["Verified", "signature good", "registry.promote", "train.start"])?;
    let found = page(&ui, "/audit?action=registry.*", &["registry.promote"])?;
    ensure!(!found.contains("train.start"), "the search filters by action");

    // Knowledge bases: documents and a query with citations, HTML in them escaped.
    let kbs = page(&ui, "/kb", &["docs"])?;
    assert_escaped(&kbs, "kb list");
    let kb = page(
        &ui,
        "/kb/docs?q=refunds+paid&mode=bm25&k=3",
        &["&lt;b&gt;bold&lt;/b&gt;.txt", "[0, ", "Refunds are paid", "&lt;script&gt;alert(3)"],
    )?;
    assert_escaped(&kb, "kb query");

    // Serving: a server's /metrics as a few numbers; a javascript: "Grafana link" is not a link.
    let metrics_addr = fake_metrics_server()?;
    page(
        &ui,
        &format!("/serving?url={}", enc(&format!("http://{metrics_addr}"))),
        &["prompt tokens", "1234", "300.0 ms"],
    )?;
    let s = page(&ui, "/serving?grafana=javascript%3Aalert(1)", &["must start with http"])?;
    ensure!(!s.contains("href=\"javascript"), "{s}");

    // Another site's name for this address is refused (DNS rebinding).
    let r = http(&ui.addr, "GET", "/", &[("Host", "evil.example")], None);
    ensure!(matches!(&r, Ok(r) if r.status == 403), "a foreign Host header is refused");

    // Approve without the key: 403, and the alias stays where it was.
    let r = http(&ui.addr, "POST", "/registry/approve", &[], Some("request=1&csrf=x"))?;
    ensure!(r.status == 403, "approve without logging in: {} {}", r.status, r.body);
    let aliases = h.json_as("alice", &["registry", "list", "aliases"])?;
    ensure!(aliases.as_array().is_some_and(|a| a.is_empty()), "{aliases}");
    let r = http(&ui.addr, "POST", "/login", &[], Some("user=bob&key=wrong-key-0123456789"))?;
    ensure!(r.status == 403, "a wrong key: {}", r.status);
    let r = http(&ui.addr, "POST", "/login", &[], Some(&format!("user=bob&key={KEY}")))?;
    ensure!(r.status == 303, "login: {} {}", r.status, r.body);
    let cookie =
        r.header("set-cookie").and_then(|c| c.split(';').next()).context("session cookie")?.to_string();
    ensure!(
        r.header("set-cookie").is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")),
        "{:?}",
        r.headers
    );
    let logged = http(&ui.addr, "GET", "/registry", &[("Cookie", &cookie)], None)?;
    ensure!(logged.body.contains("ui:bob") && logged.body.contains("Approve request 1"), "{}", logged.body);
    let csrf = form_value(&logged.body, "csrf").context("csrf token")?;
    // With the session but without its form token, or from another site: refused.
    let r =
        http(&ui.addr, "POST", "/registry/approve", &[("Cookie", &cookie)], Some("request=1&csrf=forged"))?;
    ensure!(r.status == 403, "a forged form token: {}", r.status);
    let r = http(
        &ui.addr,
        "POST",
        "/registry/approve",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        Some(&format!("request=1&csrf={csrf}")),
    )?;
    ensure!(r.status == 403, "another site's form: {}", r.status);
    let r = http(
        &ui.addr,
        "POST",
        "/registry/approve",
        &[("Cookie", &cookie), ("Origin", &ui.url())],
        Some(&format!("request=1&csrf={csrf}")),
    )?;
    ensure!(
        r.status == 200 && r.body.contains("support@champion → support@1"),
        "approve: {} {}",
        r.status,
        r.body
    );
    let show = h.json_as("alice", &["registry", "show", "support"])?;
    ensure!(
        show["artifact"]["version"] == 1
            && show["artifact"]["aliases"].as_array().is_some_and(|a| a.iter().any(|x| x == "champion")),
        "{show}"
    );
    let hist = h.ok("alice", &["registry", "history", "support"])?;
    ensure!(hist.contains("by ui:bob"), "{hist}");

    // Kill switch: the confirmation page, a bare POST refused, then disable and enable.
    let c = http(
        &ui.addr,
        "GET",
        &format!("/registry/disable?ref={}", enc("support@1")),
        &[("Cookie", &cookie)],
        None,
    )?;
    ensure!(
        c.status == 200
            && c.body.contains("It still holds")
            && c.body.contains("name=\"confirm\" value=\"yes\""),
        "{}",
        c.body
    );
    let r = http(
        &ui.addr,
        "POST",
        "/registry/disable",
        &[("Cookie", &cookie)],
        Some(&format!("ref=support%401&csrf={csrf}&reason=bad")),
    )?;
    ensure!(r.status == 400, "disable without the confirmation: {}", r.status);
    let r = http(
        &ui.addr,
        "POST",
        "/registry/disable",
        &[("Cookie", &cookie)],
        Some(&format!("ref=support%401&csrf={csrf}&reason=leaks+data&confirm=yes")),
    )?;
    ensure!(r.status == 200 && r.body.contains("disabled"), "disable: {} {}", r.status, r.body);
    let arts = h.json_as("alice", &["registry", "list", "artifacts"])?;
    ensure!(arts[0]["disabled"] == true && arts[0]["disabled_reason"] == "leaks data", "{arts}");
    page(&ui, "/registry", &["DISABLED", "Enable support@1"])?;
    let r = http(
        &ui.addr,
        "POST",
        "/registry/enable",
        &[("Cookie", &cookie)],
        Some(&format!("ref=support%401&csrf={csrf}&reason=fixed&confirm=yes")),
    )?;
    ensure!(r.status == 200 && r.body.contains("enabled"), "enable: {} {}", r.status, r.body);
    ensure!(h.json_as("alice", &["registry", "list", "artifacts"])?[0]["disabled"] == false, "enabled again");

    // Every write is on the audit log under the UI's actor, as the CLI records it.
    let tail = h.ok("alice", &["audit", "search", "--actor", "ui:bob"])?;
    for action in ["registry.approve", "registry.disable", "registry.enable"] {
        ensure!(tail.contains(action), "{action} missing from\n{tail}");
    }
    let v = h.ok("alice", &["audit", "verify"])?;
    ensure!(v.starts_with("ok:"), "{v}");

    if std::env::var("FERROTUNE_CHECK_UI_BROWSER").is_ok_and(|v| v == "1") {
        browser_check(&h, &ui)?;
    } else {
        eprintln!(
            "browser check skipped (FERROTUNE_CHECK_UI_BROWSER=1 runs scripts/ui/browser_check.py in headless Chromium)"
        );
    }
    Ok(())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Headless Chromium through the pages; it approves request 2 (canary) from the keyboard.
fn browser_check(h: &Home, ui: &Ui) -> anyhow::Result<()> {
    let venv = repo().join(".venv-ui/bin/python");
    let python = if venv.exists() { venv } else { PathBuf::from("python3") };
    let shots = std::env::var_os("FERROTUNE_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| h.path("screenshots"));
    let o = Command::new(&python)
        .arg(repo().join("scripts/ui/browser_check.py"))
        .args([
            "--url",
            &ui.url(),
            "--key-file",
            &h.s("admin.key"),
            "--run-dir",
            &h.s("runs/a"),
            "--out",
            &shots.display().to_string(),
        ])
        .arg("--hostile-run")
        .arg(format!("/runs/0/{}", enc(HOSTILE)))
        .output()?;
    ensure!(o.status.success(), "browser check failed:\n{}", text(&o));
    eprintln!("{}", text(&o));
    let aliases = h.json_as("alice", &["registry", "list", "aliases"])?;
    ensure!(
        aliases.as_array().is_some_and(|a| a.iter().any(|x| x["alias"] == "canary" && x["version"] == 1)),
        "the browser's approval moved canary: {aliases}"
    );
    Ok(())
}
