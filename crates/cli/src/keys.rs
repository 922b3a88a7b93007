//! `ferrotune keys create|list|update|revoke`: API keys for `ferrotune serve`, stored hashed in
//! `$FERROTUNE_HOME/serve/keys.db`. A running server sees changes at its next request (it looks
//! the key up in the database on every request).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferrotune_serve::keys::{ApiKey, KeyStore, KeyUpdate, default_db_path};

#[derive(Args)]
pub struct KeysArgs {
    /// Key database (default: $FERROTUNE_HOME/serve/keys.db, as `serve` uses).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its SHA-256 is stored).
    Create {
        /// A name for the key's holder (unique among live keys): letters, digits, - _ .
        #[arg(long)]
        name: String,
        /// Models / adapters the key may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// May load and unload adapters (and use every model).
        #[arg(long)]
        admin: bool,
        /// Requests per minute (default: unlimited).
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens (prompt + completion) per minute (default: unlimited).
        #[arg(long)]
        tpm: Option<u32>,
        /// Knowledge bases the key may name in a request, comma-separated; `*` = all (default:
        /// none; bases attached in serve.toml to a model the key may use always apply).
        #[arg(long, value_delimiter = ',')]
        kbs: Vec<String>,
        /// Sequences (prompts × n) in flight at most (default: serve.toml's limits.max_concurrent).
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// May ask for `logprobs` / `top_logprobs` / `echo`, which expose the model's token
        /// distribution (default: no; admin keys may regardless).
        #[arg(long)]
        logprobs: bool,
    },
    /// Change a live key's scopes or limits (the server applies them to its next request).
    Update {
        #[arg(long)]
        name: String,
        /// Replace the model scope (comma-separated; `--models ''` = all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Replace the knowledge-base scope (comma-separated; `*` = all; `--kbs ''` = none).
        #[arg(long, value_delimiter = ',')]
        kbs: Option<Vec<String>>,
        /// Requests per minute, or `none` for unlimited.
        #[arg(long, value_parser = parse_limit)]
        rpm: Option<Limit>,
        /// Tokens per minute, or `none` for unlimited.
        #[arg(long, value_parser = parse_limit)]
        tpm: Option<Limit>,
        /// Sequences in flight at most, or `none` for the server default.
        #[arg(long, value_parser = parse_limit)]
        max_concurrent: Option<Limit>,
        /// Allow (`true`) or refuse (`false`) `logprobs` / `top_logprobs` / `echo`.
        #[arg(long, value_name = "true|false")]
        logprobs: Option<bool>,
    },
    /// List keys (names, scopes, limits, the first characters of each key; never the secret).
    List,
    /// Revoke a key by name; requests with it get 401 from then on.
    Revoke { name: String },
}

/// A limit on the command line: a positive number, or `none`.
#[derive(Clone, Copy)]
struct Limit(Option<u32>);

fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(Limit(Some(n))),
        _ => Err(format!("expected a positive number or `none`, got `{s}`")),
    }
}

fn names(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()
}

/// `YYYY-MM-DD hh:mm` (UTC) of a Unix time; the number itself if no calendar date has it.
fn date(unix: i64) -> String {
    let when = time::OffsetDateTime::from_unix_timestamp(unix).ok();
    let text = when.and_then(|t| {
        t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]")).ok()
    });
    text.unwrap_or_else(|| unix.to_string())
}

pub fn run(a: KeysArgs) -> anyhow::Result<()> {
    let path = a.db.unwrap_or_else(default_db_path);
    let store = KeyStore::open(&path)?;
    match a.command {
        KeysCommand::Create { name, models, admin, rpm, tpm, kbs, max_concurrent, logprobs } => {
            let key = ApiKey {
                name: name.clone(),
                models: names(models),
                admin,
                rpm,
                tpm,
                kbs: names(kbs),
                max_concurrent,
                logprobs,
                ..Default::default()
            };
            let secret = store.create(&key)?;
            let scope = serde_json::json!({"models": key.models, "admin": admin, "rpm": rpm, "tpm": tpm, "kbs": key.kbs, "max_concurrent": max_concurrent, "logprobs": logprobs});
            crate::audit::trail(
                &ferrotune_govern::actor(None),
                "keys.create",
                serde_json::json!({"key": name}),
                "ok",
                scope,
            )?;
            eprintln!("created key `{name}` in {}; it is shown only now:", path.display());
            println!("{secret}");
        }
        KeysCommand::List => {
            println!(
                "{:<20} {:<12} {:<24} {:<16} {:>5} {:>8} {:>6} {:>8} {:>8} {:<16} REVOKED",
                "NAME", "KEY", "MODELS", "KBS", "ADMIN", "LOGPROBS", "RPM", "TPM", "IN-FLT", "CREATED"
            );
            for r in store.list()? {
                let k = &r.key;
                let models = if k.models.is_empty() { "*".to_string() } else { k.models.join(",") };
                let kbs = if k.kbs.is_empty() { "-".to_string() } else { k.kbs.join(",") };
                let lim = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                println!(
                    "{:<20} {:<12} {:<24} {:<16} {:>5} {:>8} {:>6} {:>8} {:>8} {:<16} {}",
                    k.name,
                    format!("{}…", r.hint),
                    models,
                    kbs,
                    if k.admin { "yes" } else { "no" },
                    if k.logprobs { "yes" } else { "no" },
                    lim(k.rpm),
                    lim(k.tpm),
                    lim(k.max_concurrent),
                    date(r.created_unix),
                    r.revoked_unix.map_or("-".to_string(), date),
                );
            }
        }
        KeysCommand::Update { name, models, kbs, rpm, tpm, max_concurrent, logprobs } => {
            let u = KeyUpdate {
                models: models.map(names),
                kbs: kbs.map(names),
                rpm: rpm.map(|l| l.0),
                tpm: tpm.map(|l| l.0),
                max_concurrent: max_concurrent.map(|l| l.0),
                logprobs,
            };
            if u == KeyUpdate::default() {
                anyhow::bail!(
                    "nothing to change: give --models, --kbs, --rpm, --tpm, --max-concurrent or --logprobs"
                );
            }
            store.update(&name, &u)?;
            let change = serde_json::json!({"models": u.models, "kbs": u.kbs, "rpm": u.rpm, "tpm": u.tpm, "max_concurrent": u.max_concurrent, "logprobs": u.logprobs});
            crate::audit::trail(
                &ferrotune_govern::actor(None),
                "keys.update",
                serde_json::json!({"key": name}),
                "ok",
                change,
            )?;
            eprintln!("updated key `{name}`");
        }
        KeysCommand::Revoke { name } => {
            store.revoke(&name)?;
            crate::audit::trail(
                &ferrotune_govern::actor(None),
                "keys.revoke",
                serde_json::json!({"key": name}),
                "ok",
                serde_json::json!({}),
            )?;
            eprintln!("revoked key `{name}`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Key listings show the same calendar dates as before the `time` crate (day 20 787 is
    /// 2026-11-30).
    #[test]
    fn dates_are_utc_calendar_minutes() {
        assert_eq!(super::date(0), "1970-01-01 00:00");
        assert_eq!(super::date(20_787 * 86_400 + 3_723), "2026-11-30 01:02");
        assert_eq!(super::date(-1), "1969-12-31 23:59");
    }
}
