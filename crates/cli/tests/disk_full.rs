//! A full disk and a read-only file system under every command that writes, for real: each test
//! mounts a small tmpfs (`mount -t tmpfs -o size=...`), puts the command's output (or
//! `$FERROTUNE_HOME`) there, fills it (or remounts it read-only) and runs the `ferrotune` binary.
//! Each must exit non-zero with an error naming the path it could not write and the OS error,
//! never panic, and leave what was there before intact (the earlier outputs, checkpoint,
//! knowledge base, keys and registry still open and are unchanged).
//!
//! Mounting needs root. CI runs as root and sets `FERROTUNE_REQUIRE_ROOT=1`: there a test that
//! cannot mount fails; elsewhere it prints SKIPPED. The mount is undone when the test ends,
//! however it ends (`Tmpfs`'s Drop).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ferrotune_model::testing::skip_or_fail;

const REQUIRE_ROOT: &str = "FERROTUNE_REQUIRE_ROOT";
const ENOSPC: &str = "No space left on device";
const EROFS: &str = "Read-only file system";

/// A tmpfs mounted on a fresh temp folder; unmounted on drop.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after SKIPPED, or a failure under `FERROTUNE_REQUIRE_ROOT=1`) when it cannot mount.
    fn mount(size: &str) -> Option<Self> {
        // /proc/self belongs to the process's effective user.
        let root =
            std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        if !root {
            skip_or_fail(REQUIRE_ROOT, "not root: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mnt)
            .output()
            .expect("running mount");
        if !o.status.success() {
            skip_or_fail(
                REQUIRE_ROOT,
                &format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr)),
            );
            return None;
        }
        Some(Self { mnt, _dir: dir })
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    /// Fill the file system, leaving `leave` bytes free (in `filler`).
    fn fill(&self, leave: u64) -> anyhow::Result<()> {
        let p = self.mnt.join("filler");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p)?;
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
        let len = f.metadata()?.len();
        f.set_len(len.saturating_sub(leave))?;
        Ok(())
    }

    fn unfill(&self) -> anyhow::Result<()> {
        Ok(std::fs::remove_file(self.mnt.join("filler"))?)
    }

    fn remount(&self, opt: &str) -> anyhow::Result<()> {
        let o = Command::new("mount").args(["-o", &format!("remount,{opt}")]).arg(&self.mnt).output()?;
        ensure!(o.status.success(), "remount,{opt}: {}", String::from_utf8_lossy(&o.stderr));
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
        if !ok {
            // Something still has a file open there (a server being killed): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn ferrotune(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrotune"));
    c.env("FERROTUNE_HOME", home).env_remove("FERROTUNE_TEST_CRASH_AT");
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_ok(home: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let o = ferrotune(home).args(args).output()?;
    ensure!(o.status.success(), "`ferrotune {}` failed: {}", args.join(" "), text(&o));
    Ok(o)
}

/// Fails non-zero, names a path under `under` and says `os_error`; no panic. Returns stderr.
fn fails_clearly(home: &Path, args: &[&str], under: &Path, os_error: &str) -> anyhow::Result<String> {
    let o = ferrotune(home).args(args).output()?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(
        !o.status.success(),
        "`ferrotune {}` succeeded on a full / read-only file system",
        args.join(" ")
    );
    ensure!(!err.contains("panicked"), "`ferrotune {}` panicked:\n{err}", args.join(" "));
    ensure!(
        err.contains(&under.display().to_string()),
        "`ferrotune {}`: the error names no path under {}:\n{err}",
        args.join(" "),
        under.display()
    );
    ensure!(
        err.contains(os_error),
        "`ferrotune {}`: the error does not say `{os_error}`:\n{err}",
        args.join(" ")
    );
    // The subcommand's words (not flags, paths or numbers), and which failure it was.
    let words: Vec<&str> =
        args.iter().copied().filter(|a| a.chars().all(|c| c.is_ascii_alphabetic())).take(2).collect();
    let fs = match os_error {
        ENOSPC => "full",
        EROFS => "read-only",
        _ => "?",
    };
    report(&format!("ferrotune {} ({fs})", words.join(" ")), &err);
    Ok(err)
}

/// A row of `scripts/reliability/disk_full.sh`'s table (what the user saw): printed, and appended
/// to `$FERROTUNE_DISK_FULL_OUT` when set.
fn report(what: &str, saw: &str) {
    let row = format!("| {what} | {} |", saw.trim().replace('\n', " / ").replace('|', "\\|"));
    println!("DISK-FULL {row}");
    if let Some(out) = std::env::var_os("FERROTUNE_DISK_FULL_OUT") {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .and_then(|mut f| writeln!(f, "{row}"));
        assert!(written.is_ok(), "writing the table row: {written:?}");
    }
}

fn files(root: &Path) -> anyhow::Result<std::collections::BTreeMap<PathBuf, Vec<u8>>> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>,
    ) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                out.insert(p.strip_prefix(root)?.to_path_buf(), std::fs::read(&p)?);
            }
        }
        Ok(())
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn rows(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let q = format!("Please spell the number {i} backwards, with care and attention to detail.");
        let a = format!("[ok] {} -- bye", i.to_string().chars().rev().collect::<String>());
        s.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------

#[test]
fn data_prepare_on_a_full_or_read_only_disk_fails_clearly_and_keeps_earlier_outputs() -> anyhow::Result<()> {
    let Some(fs) = Tmpfs::mount("2m") else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("home");
    let (small, big) = (dir.path().join("small.jsonl"), dir.path().join("big.jsonl"));
    std::fs::write(&small, rows(20))?;
    std::fs::write(&big, rows(8000))?;
    let earlier = fs.path().join("earlier");
    run_ok(
        &home,
        &["data", "prepare", small.to_str().context("utf8")?, "--out", earlier.to_str().context("utf8")?],
    )?;
    let before = files(&earlier)?;

    fs.fill(100 * 1024)?;
    let out = fs.path().join("new");
    let args = ["data", "prepare", big.to_str().context("utf8")?, "--out", out.to_str().context("utf8")?];
    fails_clearly(&home, &args, fs.path(), ENOSPC)?;
    ensure!(!out.exists(), "a partial --out was left");
    ensure!(files(&earlier)? == before, "the earlier outputs changed");
    let left: Vec<_> = std::fs::read_dir(fs.path())?.filter_map(|e| Some(e.ok()?.file_name())).collect();
    ensure!(left.len() == 2, "left on the full disk: {left:?}");

    fs.unfill()?;
    fs.remount("ro")?;
    fails_clearly(&home, &args, fs.path(), EROFS)?;
    ensure!(files(&earlier)? == before, "the earlier outputs changed");
    Ok(())
}

#[test]
fn train_on_a_disk_that_fills_fails_clearly_and_its_checkpoint_resumes() -> anyhow::Result<()> {
    let Some(fs) = Tmpfs::mount("8m") else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let home = d.join("home");
    ferrotune_model::testing::write_tiny_model(&d.join("tiny"))?;
    std::fs::write(d.join("train.jsonl"), rows(24))?;
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--model",
            &d.join("tiny").display().to_string(),
            "--data",
            &d.join("train.jsonl").display().to_string(),
            "--out",
            &out.display().to_string(),
            "--max-steps",
            "6",
            "--save-steps",
            "2",
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
            "--quiet",
            "--no-registry",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let strs = |v: &[String]| v.iter().map(String::clone).collect::<Vec<_>>();
    // An uninterrupted run elsewhere: how big a run folder is, and what a resume must reproduce.
    let straight = d.join("straight");
    let a = strs(&args(&straight, &[]));
    run_ok(&home, &a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let ckpt: u64 = files(&straight.join("checkpoints/step-2"))?.values().map(|b| b.len() as u64).sum();

    // Room for the first checkpoint and a little more: the run fails while writing a later one.
    let run = fs.path().join("run");
    fs.fill(0)?;
    let filler = fs.path().join("filler");
    let full = std::fs::metadata(&filler)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)?
        .set_len(full.saturating_sub(ckpt * 3 / 2 + 256 * 1024))?;
    let a = strs(&args(&run, &[]));
    let err = fails_clearly(&home, &a.iter().map(String::as_str).collect::<Vec<_>>(), fs.path(), ENOSPC)?;
    ensure!(
        run.join("checkpoints/step-2/trainer_state.json").is_file(),
        "no complete checkpoint survived:\n{err}"
    );
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    ensure!(left.iter().all(|n| !n.starts_with('.')), "a temp checkpoint was left: {left:?}");

    // With room again, --resume finishes and ends where the uninterrupted run did.
    fs.unfill()?;
    let a = strs(&args(&run, &["--resume"]));
    run_ok(&home, &a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let metrics = |p: &Path| -> anyhow::Result<Vec<serde_json::Value>> {
        std::fs::read_to_string(p.join("metrics.jsonl"))?
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l)?;
                if let Some(o) = v.as_object_mut() {
                    o.remove("tokens_per_sec");
                }
                Ok(v)
            })
            .collect()
    };
    ensure!(
        metrics(&run)? == metrics(&straight)?,
        "the resumed run's metrics differ from an uninterrupted run's"
    );
    ensure!(
        std::fs::read(run.join("adapter/adapter_model.safetensors"))?
            == std::fs::read(straight.join("adapter/adapter_model.safetensors"))?,
        "the resumed run's adapter differs"
    );
    Ok(())
}

#[test]
fn keys_and_registry_on_a_full_or_read_only_home_fail_clearly_and_stay_intact() -> anyhow::Result<()> {
    let Some(fs) = Tmpfs::mount("4m") else { return Ok(()) };
    let home = fs.path().to_path_buf();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("train.jsonl");
    std::fs::write(&data, rows(20))?;
    let alice =
        String::from_utf8(run_ok(&home, &["keys", "create", "--name", "alice"])?.stdout)?.trim().to_string();
    run_ok(&home, &["data", "validate", data.to_str().context("utf8")?])?;
    let registry_before = registry_listing(&home)?;

    fs.fill(0)?;
    for args in [vec!["keys", "create", "--name", "bob"], vec!["keys", "revoke", "alice"]] {
        fails_clearly(&home, &args, &home, ENOSPC)?;
    }
    std::fs::write(dir.path().join("other.jsonl"), rows(21))?;
    let other = dir.path().join("other.jsonl");
    fails_clearly(&home, &["data", "validate", other.to_str().context("utf8")?], &home, ENOSPC)?;
    fs.unfill()?;
    check_keys(&home, &alice)?;
    ensure!(registry_listing(&home)? == registry_before, "the registry changed");

    fs.remount("ro")?;
    for args in [vec!["keys", "create", "--name", "bob"], vec!["keys", "revoke", "alice"]] {
        fails_clearly(&home, &args, &home, EROFS)?;
    }
    fails_clearly(&home, &["data", "validate", other.to_str().context("utf8")?], &home, EROFS)?;
    fs.remount("rw")?;
    check_keys(&home, &alice)?;
    ensure!(registry_listing(&home)? == registry_before, "the registry changed");
    Ok(())
}

/// alice's key still works, bob's does not exist, the database opens.
fn check_keys(home: &Path, alice: &str) -> anyhow::Result<()> {
    let store = ferrotune_serve::keys::KeyStore::open(&home.join("serve/keys.db"))?;
    ensure!(store.lookup(alice)?.is_some(), "alice's key stopped working");
    let names: Vec<String> = store.list()?.into_iter().map(|r| r.key.name).collect();
    ensure!(names == ["alice"], "keys: {names:?}");
    Ok(())
}

fn registry_listing(home: &Path) -> anyhow::Result<String> {
    let o = run_ok(home, &["registry", "list"])?;
    Ok(String::from_utf8(o.stdout)?)
}

// ---------------------------------------------------------------------------------------------

/// `rag query --json` for a few questions: (doc_id, chunk_id, score) of each hit.
fn rag_answers(home: &Path, kb_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut all = Vec::new();
    for q in ["How many days do I have to return an item?", "express shipping cost"] {
        let o = run_ok(
            home,
            &[
                "rag",
                "--kb-dir",
                kb_dir.to_str().context("utf8")?,
                "query",
                "--kb",
                "kb",
                q,
                "--k",
                "5",
                "--json",
            ],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        for h in v["hits"].as_array().context("hits")? {
            all.push(format!("{} {} {}", h["doc_id"], h["chunk_id"], h["score"]));
        }
    }
    Ok(all)
}

#[test]
fn rag_ingest_on_a_full_or_read_only_disk_fails_clearly_and_the_kb_still_answers() -> anyhow::Result<()> {
    // The embedder comes from the real $FERROTUNE_HOME; the knowledge base goes on the tmpfs.
    if ferrotune_model::testing::installed_model(ferrotune_model::store::DEFAULT_EMBEDDER).is_none() {
        return Ok(());
    }
    let Some(fs) = Tmpfs::mount("8m") else { return Ok(()) };
    let home = ferrotune_model::store::home();
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs)?;
    std::fs::write(
        docs.join("returns.md"),
        "# Returns\n\nYou may return an item within 30 days of delivery.\n",
    )?;
    std::fs::write(docs.join("shipping.txt"), "Express shipping costs 9 euros and arrives next day.\n")?;
    let kb_dir = fs.path();
    let ingest = [
        "rag",
        "--kb-dir",
        kb_dir.to_str().context("utf8")?,
        "ingest",
        "--kb",
        "kb",
        docs.to_str().context("utf8")?,
    ];
    run_ok(&home, &ingest)?;
    let before = rag_answers(&home, kb_dir)?;

    // More documents than the disk has room for.
    let mut long = String::new();
    for i in 0..400 {
        long.push_str(&format!(
            "Paragraph {i}: the warehouse in city number {i} ships parcels on weekdays only.\n\n"
        ));
    }
    std::fs::write(docs.join("warehouses.txt"), long)?;
    fs.fill(16 * 1024)?;
    fails_clearly(&home, &ingest, kb_dir, ENOSPC)?;
    ensure!(
        rag_answers(&home, kb_dir)? == before,
        "the knowledge base answers differently after the failed ingest"
    );
    fs.unfill()?;
    ensure!(rag_answers(&home, kb_dir)? == before, "the knowledge base answers differently");

    fs.remount("ro")?;
    fails_clearly(&home, &ingest, kb_dir, EROFS)?;
    ensure!(rag_answers(&home, kb_dir)? == before, "a read-only knowledge base answers differently");
    fs.remount("rw")?;
    run_ok(&home, &ingest)?;
    ensure!(rag_answers(&home, kb_dir)? != before, "the completed ingest changed nothing");
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Start `ferrotune serve` on a free port; returns the child and its address once it listens.
fn start_server(home: &Path, model: &Path) -> anyhow::Result<(Child, String)> {
    let mut child = ferrotune(home)
        .args(["serve", "--model", &model.display().to_string(), "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            bail!("the server did not start")
        }
    }
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no status")?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((status, body))
}

fn reads_work(addr: &str, key: &str) -> anyhow::Result<()> {
    let (st, body) = http(addr, "GET", "/v1/models", key, "")?;
    ensure!(st == 200, "GET /v1/models: {st} {body}");
    let chat = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let (st, body) = http(addr, "POST", "/v1/chat/completions", key, &chat.to_string())?;
    ensure!(st == 200, "chat completion: {st} {body}");
    Ok(())
}

#[test]
fn serve_keeps_answering_while_its_home_is_full_or_read_only() -> anyhow::Result<()> {
    let Some(fs) = Tmpfs::mount("4m") else { return Ok(()) };
    let home = fs.path().to_path_buf();
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("tiny");
    ferrotune_model::testing::write_tiny_model(&model)?;
    let key =
        String::from_utf8(run_ok(&home, &["keys", "create", "--name", "alice"])?.stdout)?.trim().to_string();
    let (mut server, addr) = start_server(&home, &model)?;
    let outcome = (|| -> anyhow::Result<()> {
        reads_work(&addr, &key)?;
        fs.fill(0)?;
        fails_clearly(&home, &["keys", "create", "--name", "bob"], &home, ENOSPC)?;
        reads_work(&addr, &key)?;
        let (st, _) = http(&addr, "GET", "/v1/models", "ft-not-a-key", "")?;
        ensure!(st == 401, "a wrong key got {st} while the disk was full");
        fs.unfill()?;
        // Read-only while it runs; the kernel refuses while a file there is open for writing
        // (`mount` says busy), which is then reported, not hidden.
        let ro = fs.remount("ro");
        if let Err(e) = &ro {
            report("serve (home remounted read-only while it runs)", &format!("the kernel refuses: {e}"));
        } else {
            fails_clearly(&home, &["keys", "create", "--name", "bob"], &home, EROFS)?;
            reads_work(&addr, &key)?;
            fs.remount("rw")?;
        }
        ensure!(server.try_wait()?.is_none(), "the server exited");
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    outcome?;
    // Started on a read-only home, serve refuses with the reason: it could not record (audit
    // log) or look up keys there.
    fs.remount("ro")?;
    let model = model.to_str().context("utf8")?;
    fails_clearly(&home, &["serve", "--model", model, "--port", "0"], &home, EROFS)?;
    Ok(())
}
