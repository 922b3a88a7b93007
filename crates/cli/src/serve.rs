//! `ferrotune serve`: read `serve.toml` (optional), apply the flags, refuse an unauthenticated
//! public bind, then run the server until SIGINT / SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferrotune_serve::ServeConfig;
use ferrotune_serve::config::WeightsSetting;

use crate::textgen::WeightsArg;

#[derive(Args)]
pub struct ServeArgs {
    /// serve.toml; every key and its default is documented in examples/serve.toml. Flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Installed model name or path to a GGUF file / HF directory (default: smollm2-135m-instruct).
    #[arg(long)]
    model: Option<String>,
    /// The name clients put in "model" for the base (default: the model's name or file stem).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Load a LoRA adapter at start-up, served under NAME (repeatable): --adapter support=runs/x/adapter.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Listen address (default 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Listen port (default 8000).
    #[arg(long)]
    port: Option<u16>,
    /// Weight path: f32 (reference) or quantized (a GGUF's blocks kept, faster decode).
    #[arg(long, value_enum)]
    weights: Option<WeightsArg>,
    /// Serve without API keys (local development). Only on a loopback address unless
    /// --insecure-no-auth is given too.
    #[arg(long)]
    no_auth: bool,
    /// Allow auth off on a non-loopback address: anyone who can reach the port can use the model.
    #[arg(long)]
    insecure_no_auth: bool,
}

fn parse_adapter(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| format!("expected NAME=DIR, got `{s}`"))?;
    if name.is_empty() || dir.is_empty() {
        return Err(format!("expected NAME=DIR, got `{s}`"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = match &a.config {
        Some(p) => ServeConfig::from_file(p)?,
        None => ServeConfig::default(),
    };
    if let Some(m) = a.model {
        cfg.model = m;
    }
    if let Some(n) = a.served_model_name {
        cfg.served_model_name = Some(n);
    }
    cfg.adapters.extend(a.adapters);
    if let Some(h) = a.host {
        cfg.host = h;
    }
    if let Some(p) = a.port {
        cfg.port = p;
    }
    if let Some(w) = a.weights {
        cfg.weights = match w {
            WeightsArg::F32 => WeightsSetting::F32,
            WeightsArg::Quantized => WeightsSetting::Quantized,
        };
    }
    if a.no_auth {
        cfg.auth = false;
    }
    cfg.validate()?;
    ferrotune_serve::check_exposure(&cfg, a.insecure_no_auth)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let (host, port, auth) = (cfg.host.clone(), cfg.port, cfg.auth);
        let timeout = Duration::from_secs(cfg.shutdown_timeout_secs);
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        let addr = listener.local_addr()?;
        eprintln!("loading {} ...", cfg.model);
        let state = ferrotune_serve::build_state(cfg).await?;
        let embed = state.embedder.as_ref().map_or("off".to_string(), |e| e.name.clone());
        eprintln!(
            "serving {} on http://{addr}/v1 (auth {}; adapters: [{}]; embeddings: {embed}); Ctrl-C stops",
            state.model_name(),
            if auth { "on" } else { "OFF" },
            state.engine.adapters().join(", "),
        );
        ferrotune_serve::serve(listener, state, shutdown_signal(), timeout).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM (also the dashboard's stop signal).
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn shutdown_signal() {
    stop_signal().await;
    eprintln!(
        "shutting down: finishing in-flight requests (a second signal does not force it; see shutdown_timeout_secs)"
    );
}
