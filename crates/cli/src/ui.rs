//! `ferrotune ui`: the web dashboard (`ferrotune-ui`), wired to $FERROTUNE_HOME, the run folders
//! and this binary's audit trail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferrotune_ui::auth::AdminKey;
use ferrotune_ui::{AppState, UiConfig};

#[derive(Args)]
#[command(
    after_help = "Reads $FERROTUNE_HOME (registry.db, audit/, kb/) and the run folders. Reading needs nothing; \
approving, rejecting, disabling and enabling need the admin key (--admin-key-file, or FERROTUNE_UI_ADMIN_KEY; at least 16 \
characters), entered once on the login page with a name that is recorded as ui:NAME.\n\
The Serving page sends FERROTUNE_UI_SERVE_KEY, if set, as the bearer key to a server's /metrics."
)]
pub struct UiArgs {
    /// Listen address. Anything but loopback lets whoever reaches the port read the dashboard.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// A folder of run folders (repeatable) [default: runs].
    #[arg(long = "runs", value_name = "DIR")]
    runs: Vec<PathBuf>,
    /// File holding the admin key that writes need [default: $FERROTUNE_UI_ADMIN_KEY; neither: read-only].
    #[arg(long, value_name = "FILE")]
    admin_key_file: Option<PathBuf>,
}

fn admin_key(file: Option<&PathBuf>) -> anyhow::Result<Option<AdminKey>> {
    let (text, from) = match file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the admin key file {}", f.display()))?,
            f.display().to_string(),
        ),
        None => match std::env::var("FERROTUNE_UI_ADMIN_KEY") {
            Ok(k) if !k.trim().is_empty() => (k, "FERROTUNE_UI_ADMIN_KEY".to_string()),
            _ => return Ok(None),
        },
    };
    AdminKey::new(&text).map(Some).map_err(|e| anyhow::anyhow!("{from}: {e}"))
}

pub fn run(a: UiArgs) -> anyhow::Result<()> {
    let admin = admin_key(a.admin_key_file.as_ref())?;
    let writes = admin.is_some();
    let loopback =
        a.host == "localhost" || a.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        eprintln!(
            "warning: listening on {}: anyone who can reach it can read the dashboard (writes still need the admin key)",
            a.host
        );
    }
    let cfg = UiConfig {
        home: ferrotune_model::store::home(),
        runs: if a.runs.is_empty() { vec![PathBuf::from("runs")] } else { a.runs },
        admin_key: admin,
        loopback,
        serve_key: std::env::var("FERROTUNE_UI_SERVE_KEY").ok().filter(|k| !k.trim().is_empty()),
        poll: Duration::from_millis(1000),
    };
    // The dashboard's writes leave the entries `ferrotune registry` leaves.
    let trail: ferrotune_ui::Trail = Arc::new(|actor, action, subject, outcome, fields| {
        crate::audit::trail(actor, action, subject, outcome, fields).map_err(|e| format!("{e:#}"))
    });
    let state = AppState::new(cfg, trail);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "dashboard on http://{addr}/ (writes {}); Ctrl-C stops",
            if writes { "need the admin key" } else { "off: no admin key" }
        );
        ferrotune_ui::serve(listener, state, crate::serve::stop_signal())
            .await
            .context("serving the dashboard")?;
        anyhow::Ok(())
    })
}
