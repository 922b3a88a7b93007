//! `ferrotune audit`: the tamper-evident log of what was trained, released and served — verify
//! it, prove an entry, search it, export it for an auditor. Also `trail`, which the other
//! commands use to append their events.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferrotune_govern::audit::{AuditConfig, AuditLog, Event, Filter};

#[derive(Args)]
#[command(
    after_help = "The log is $FERROTUNE_HOME/audit/ (or --dir): entries as canonical JSON lines, an RFC 6962 \
Merkle tree over them, and checkpoints signed with the Ed25519 key created there on first use (mode 0600) in the \
C2SP signed-note format. Anyone holding the verifier key (`ferrotune audit pubkey`) can check an exported bundle \
with scripts/audit/verify.py, without this program.\n\
Settings: $FERROTUNE_HOME/audit/config.toml (origin, checkpoint_every_entries, checkpoint_every_secs, retention_days)."
)]
pub struct AuditArgs {
    /// Log folder [default: $FERROTUNE_HOME/audit].
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Args, Clone, Default)]
struct FilterArgs {
    /// Entries at or after this time (RFC 3339, UTC: 2026-12-01 or 2026-12-01T10:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Entries before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only this actor (key name or OS user).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action, or a family of them (`registry.*`).
    #[arg(long)]
    action: Option<String>,
    /// Only entries whose subject contains this text (an id, a name, a hash).
    #[arg(long)]
    subject: Option<String>,
}

impl FilterArgs {
    fn filter(&self, limit: Option<usize>) -> Filter {
        Filter {
            since: self.since.clone(),
            until: self.until.clone(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            subject: self.subject.clone(),
            limit,
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the tree from every entry and check every signed checkpoint and the consistency
    /// between them; exit 1 naming the first bad entry or checkpoint.
    Verify {
        /// A checkpoint (signed note) kept from earlier: the log must still extend it.
        #[arg(long, value_name = "FILE")]
        from_checkpoint: Option<PathBuf>,
    },
    /// An offline proof that entry INDEX is in the log: the entry, its inclusion proof and a
    /// signed checkpoint (JSON; check it with scripts/audit/verify.py proof FILE).
    Prove {
        index: u64,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// A proof that the log at NEW_SIZE extends the log at OLD_SIZE (nothing rewritten).
    Consistency {
        old_size: u64,
        new_size: Option<u64>,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Entries, oldest first (with filters).
    Show {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The last N entries.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Entries, oldest first, matching the filters (the same as show).
    Search {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write a bundle for an auditor: the entries, their inclusion proofs, the checkpoints with
    /// consistency proofs and the verifier key (a new or empty folder).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the verifier key (C2SP format: name+id+key) to give to auditors.
    Pubkey,
    /// Sign a checkpoint of the log as it is now.
    Checkpoint,
    /// Move entries older than retention_days into compressed archive segments (they still
    /// verify and can be proven).
    Archive,
}

/// `$FERROTUNE_HOME/audit/config.toml`, or the defaults.
pub fn config(dir: &std::path::Path) -> anyhow::Result<AuditConfig> {
    let path = dir.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuditConfig::default()),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

fn open(dir: Option<PathBuf>) -> anyhow::Result<AuditLog> {
    let dir = dir.unwrap_or_else(ferrotune_govern::audit::default_dir);
    let cfg = config(&dir)?;
    Ok(AuditLog::open(&dir, &cfg)?)
}

fn write_or_print(v: &serde_json::Value, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    match out {
        Some(p) => {
            std::fs::write(p, text).with_context(|| p.display().to_string())?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn print_entries(rows: &[(u64, serde_json::Value)], json: bool) -> anyhow::Result<()> {
    if json {
        let v: Vec<serde_json::Value> =
            rows.iter().map(|(i, e)| serde_json::json!({"index": i, "entry": e})).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (i, e) in rows {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
        println!(
            "{i:>8}  {}  {:<22} {:<8} by {:<12} {}",
            s("time"),
            s("action"),
            s("outcome"),
            s("actor"),
            serde_json::to_string(&e["subject"]).unwrap_or_default()
        );
    }
    Ok(())
}

pub fn run(a: AuditArgs) -> anyhow::Result<()> {
    let json = a.json;
    let log = open(a.dir)?;
    match a.command {
        AuditCommand::Verify { from_checkpoint } => {
            let trusted = from_checkpoint
                .as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| p.display().to_string()))
                .transpose()?;
            let r = log.verify(trusted.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.ok {
                println!("ok: {} entries, {} signed checkpoints, root {}", r.entries, r.checkpoints, r.root);
            } else {
                for p in &r.problems {
                    println!("FAIL: {p}");
                }
            }
            if !r.ok {
                anyhow::bail!(
                    "the audit log in {} does not verify: {}",
                    log.dir().display(),
                    r.problems.first().map_or("", String::as_str)
                );
            }
            Ok(())
        }
        AuditCommand::Prove { index, out } => write_or_print(&log.prove(index)?, out.as_ref()),
        AuditCommand::Consistency { old_size, new_size, out } => {
            write_or_print(&log.consistency(old_size, new_size)?, out.as_ref())
        }
        AuditCommand::Show { filter, limit } | AuditCommand::Search { filter, limit } => {
            print_entries(&log.entries(&filter.filter(limit), false)?, json)
        }
        AuditCommand::Tail { n, filter } => print_entries(&log.entries(&filter.filter(Some(n)), true)?, json),
        AuditCommand::Export { filter, out } => {
            let n = log.export(&filter.filter(None), &out)?;
            if json {
                println!("{}", serde_json::json!({"entries": n, "out": out}));
            } else {
                println!(
                    "exported {n} entries with proofs to {} (check: scripts/audit/verify.sh bundle {} --key-file KEY)",
                    out.display(),
                    out.display()
                );
            }
            Ok(())
        }
        AuditCommand::Pubkey => {
            println!("{}", log.verifier_key());
            Ok(())
        }
        AuditCommand::Checkpoint => {
            let (cp, note) = log.checkpoint()?;
            if json {
                println!("{}", serde_json::json!({"origin": cp.origin, "size": cp.size, "note": note}));
            } else {
                print!("{note}");
            }
            Ok(())
        }
        AuditCommand::Archive => {
            let n = log.archive()?;
            if json {
                println!("{}", serde_json::json!({"archived": n}));
            } else {
                println!("archived {n} entries");
            }
            Ok(())
        }
    }
}

/// Append one event of a command to the audit log (`$FERROTUNE_HOME/audit`). Failing to record
/// is an error: a command that must leave a trace does not succeed silently without one.
pub fn trail(
    actor: &str,
    action: &str,
    subject: serde_json::Value,
    outcome: &str,
    fields: serde_json::Value,
) -> anyhow::Result<()> {
    let dir = ferrotune_govern::audit::default_dir();
    let log = AuditLog::open(&dir, &config(&dir)?)
        .with_context(|| format!("opening the audit log {}", dir.display()))?;
    log.append(&[Event::new(actor, action, subject, outcome, fields)])
        .with_context(|| format!("appending `{action}` to the audit log {}", dir.display()))?;
    Ok(())
}
