//! `ferrotune keys create|list|revoke`: API keys for `ferrotune serve`, stored hashed in
//! `$FERROTUNE_HOME/serve/keys.db`. A running server sees changes at once (it reads the
//! database per request).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferrotune_serve::keys::{ApiKey, KeyStore, default_db_path};

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
    },
    /// List keys (names, scopes, limits, the first characters of each key; never the secret).
    List,
    /// Revoke a key by name; requests with it get 401 from then on.
    Revoke { name: String },
}

fn date(unix: i64) -> String {
    let (y, m, d) = ferrotune_model::clock::civil_from_days(unix.div_euclid(86_400));
    let t = unix.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", t / 3600, t / 60 % 60)
}

pub fn run(a: KeysArgs) -> anyhow::Result<()> {
    let path = a.db.unwrap_or_else(default_db_path);
    let store = KeyStore::open(&path)?;
    match a.command {
        KeysCommand::Create { name, models, admin, rpm, tpm } => {
            let models = models.into_iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            let secret = store.create(&ApiKey { name: name.clone(), models, admin, rpm, tpm })?;
            eprintln!("created key `{name}` in {}; it is shown only now:", path.display());
            println!("{secret}");
        }
        KeysCommand::List => {
            println!("{:<20} {:<12} {:<24} {:>5} {:>6} {:>8} {:<16} REVOKED", "NAME", "KEY", "MODELS", "ADMIN", "RPM", "TPM", "CREATED");
            for r in store.list()? {
                let k = &r.key;
                let models = if k.models.is_empty() { "*".to_string() } else { k.models.join(",") };
                let lim = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                println!(
                    "{:<20} {:<12} {:<24} {:>5} {:>6} {:>8} {:<16} {}",
                    k.name,
                    format!("{}…", r.hint),
                    models,
                    if k.admin { "yes" } else { "no" },
                    lim(k.rpm),
                    lim(k.tpm),
                    date(r.created_unix),
                    r.revoked_unix.map_or("-".to_string(), date),
                );
            }
        }
        KeysCommand::Revoke { name } => {
            store.revoke(&name)?;
            eprintln!("revoked key `{name}`");
        }
    }
    Ok(())
}
