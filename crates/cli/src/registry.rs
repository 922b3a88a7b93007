//! `ferrotune registry`: what is on record, releases by approval, the kill switch, model cards.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ferrotune_govern::{Policy, Promotion, Registry};

#[derive(Args)]
#[command(
    after_help = "The registry is $FERROTUNE_HOME/registry.db (SQLite). `train`, `eval` and `data validate` record \
into it unless given --no-registry.\n\
References: NAME (its `champion`), NAME@VERSION (NAME@3), NAME@ALIAS (NAME@canary).\n\
Identity: --by USER, else the OS user ($USER), recorded as given: the registry does not authenticate anyone.\n\
Release rules: $FERROTUNE_HOME/policy.toml or --policy (without one, `champion` needs one approval by someone \
other than the requester; other aliases move when asked)."
)]
pub struct RegistryArgs {
    /// Registry database [default: $FERROTUNE_HOME/registry.db].
    #[arg(long, global = true, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Models,
    Datasets,
    Runs,
    Artifacts,
    Evals,
    Aliases,
    Requests,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// List what is on record (default: artifacts).
    List {
        #[arg(value_enum)]
        kind: Option<Kind>,
    },
    /// The lineage of a version as a tree: data → run → artifact → evaluations → releases.
    Show {
        /// NAME, NAME@VERSION or NAME@ALIAS.
        reference: String,
        /// Graphviz instead of the tree (`| dot -Tsvg > lineage.svg`).
        #[arg(long)]
        dot: bool,
    },
    /// Every registration, alias change, approval, rejection, disable and enable of NAME.
    History { name: String },
    /// Ask to point ALIAS at NAME's VERSION (applied at once when the policy needs no approval).
    Promote {
        name: String,
        version: u32,
        #[arg(long, value_name = "ALIAS")]
        to: String,
        #[arg(long)]
        reason: String,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
        /// Release rules [default: $FERROTUNE_HOME/policy.toml, else the built-in rules].
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Approve a promotion request (not your own); the alias moves when enough have approved.
    Approve {
        request: i64,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Reject a promotion request.
    Reject {
        request: i64,
        #[arg(long)]
        reason: String,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
    },
    /// Kill switch: a disabled version is not served (a running server stops within a second)
    /// and cannot be promoted.
    Disable {
        /// NAME@VERSION.
        reference: String,
        #[arg(long)]
        reason: String,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
    },
    /// Undo `disable`.
    Enable {
        /// NAME@VERSION.
        reference: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
    },
    /// Write a model card (README.md with Hugging Face front matter) for a version.
    Card {
        reference: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// What only the owner can say (intended use, limitations, license, …) [default:
        /// card.toml beside the run folder's adapter, if any]. Unfilled fields are listed as TODO.
        #[arg(long, value_name = "FILE")]
        card: Option<PathBuf>,
    },
    /// Record a run folder made without the registry (from its lineage.json).
    Import {
        run_dir: PathBuf,
        /// Artifact name [default: the run folder's name].
        #[arg(long, value_name = "NAME")]
        register_as: Option<String>,
        #[arg(long, value_name = "USER")]
        by: Option<String>,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// NAME@VERSION, for the commands that act on one version.
fn name_version(reg: &Registry, reference: &str) -> anyhow::Result<(String, u32)> {
    match reference.parse::<ferrotune_govern::Reference>()? {
        ferrotune_govern::Reference { name, selector: ferrotune_govern::Selector::Version(v) } => {
            Ok((name, v))
        }
        _ => {
            let hint = reg
                .resolve(reference, "champion")
                .map(|a| format!(" (it is {} now)", a.reference()))
                .unwrap_or_default();
            anyhow::bail!("`{reference}`: name the version, as NAME@VERSION{hint}")
        }
    }
}

pub fn run(a: RegistryArgs) -> anyhow::Result<()> {
    let path = a.registry.clone().unwrap_or_else(ferrotune_govern::default_path);
    let reg = Registry::open(&path)?;
    let json = a.json;
    match a.command {
        RegistryCommand::List { kind } => list(&reg, kind.unwrap_or(Kind::Artifacts), json),
        RegistryCommand::Show { reference, dot } => {
            let l = reg.lineage(&reference, "champion")?;
            if json {
                print_json(&l)
            } else if dot {
                print!("{}", ferrotune_govern::render::dot(&l));
                Ok(())
            } else {
                print!("{}", ferrotune_govern::render::tree(&l));
                Ok(())
            }
        }
        RegistryCommand::History { name } => {
            let h = reg.history(&name)?;
            if json {
                return print_json(&h);
            }
            if h.is_empty() {
                anyhow::bail!("nothing on record for `{name}`");
            }
            for e in &h {
                let version = e.version.map(|v| format!("@{v}")).unwrap_or_default();
                let alias = e.alias.as_deref().map(|al| {
                    let from = e.from_version.map_or("none".to_string(), |v| format!("v{v}"));
                    let to = e.to_version.map_or("none".to_string(), |v| format!("v{v}"));
                    format!(" {al}: {from} → {to}")
                });
                let request = e.request.map(|r| format!(" (request {r})")).unwrap_or_default();
                let reason = e
                    .reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                println!(
                    "{}  {:<18} {}{}{}  by {}{}{}",
                    e.time,
                    e.action,
                    e.name,
                    version,
                    alias.unwrap_or_default(),
                    e.actor,
                    request,
                    reason
                );
            }
            Ok(())
        }
        RegistryCommand::Promote { name, version, to, reason, by, policy } => {
            let policy = Policy::load(policy.as_deref())?;
            let actor = ferrotune_govern::actor(by.as_deref());
            let subject = serde_json::json!({"name": name, "version": version, "alias": to});
            let p = audited(
                &actor,
                "registry.promote",
                subject,
                &serde_json::json!({"reason": reason}),
                reg.promote(&name, version, &to, &reason, &actor, &policy),
            )?;
            report_promotion(&name, &p, json)
        }
        RegistryCommand::Approve { request, by, policy } => {
            let policy = Policy::load(policy.as_deref())?;
            let actor = ferrotune_govern::actor(by.as_deref());
            let about = reg.request(request).ok();
            let subject = serde_json::json!({"request": request, "name": about.as_ref().map(|r| &r.name), "version": about.as_ref().map(|r| r.version),
                "alias": about.as_ref().map(|r| &r.alias)});
            let p = audited(
                &actor,
                "registry.approve",
                subject,
                &serde_json::json!({}),
                reg.approve(request, &actor, &policy),
            )?;
            let name = about.map(|r| r.name).unwrap_or_default();
            report_promotion(&name, &p, json)
        }
        RegistryCommand::Reject { request, reason, by } => {
            let actor = ferrotune_govern::actor(by.as_deref());
            let r = audited(
                &actor,
                "registry.reject",
                serde_json::json!({"request": request}),
                &serde_json::json!({"reason": reason}),
                reg.reject(request, &actor, &reason),
            )?;
            if json {
                return print_json(&r);
            }
            println!("request {} rejected: {}@{} stays off {}", r.id, r.name, r.version, r.alias);
            Ok(())
        }
        RegistryCommand::Disable { reference, reason, by } => {
            let (name, version) = name_version(&reg, &reference)?;
            let actor = ferrotune_govern::actor(by.as_deref());
            let a = audited(
                &actor,
                "registry.disable",
                serde_json::json!({"name": name, "version": version}),
                &serde_json::json!({"reason": reason}),
                reg.disable(&name, version, &reason, &actor),
            )?;
            if json {
                return print_json(&a);
            }
            let aliases = if a.aliases.is_empty() {
                String::new()
            } else {
                format!(" (still holds {}: requests for it are refused)", a.aliases.join(", "))
            };
            println!("{} disabled{aliases}", a.reference());
            Ok(())
        }
        RegistryCommand::Enable { reference, reason, by } => {
            let (name, version) = name_version(&reg, &reference)?;
            let actor = ferrotune_govern::actor(by.as_deref());
            let a = audited(
                &actor,
                "registry.enable",
                serde_json::json!({"name": name, "version": version}),
                &serde_json::json!({"reason": reason}),
                reg.enable(&name, version, &reason, &actor),
            )?;
            if json {
                return print_json(&a);
            }
            println!("{} enabled", a.reference());
            Ok(())
        }
        RegistryCommand::Card { reference, out, card } => {
            let l = reg.lineage(&reference, "champion")?;
            let card_file = card.or_else(|| {
                let beside = l.run.as_ref().map(|r| PathBuf::from(&r.run_dir).join("card.toml"))?;
                beside.exists().then_some(beside)
            });
            let c = ferrotune_govern::card::CardToml::load(card_file.as_deref())?;
            let written = ferrotune_govern::card::write(&out, &l, &c)?;
            if json {
                return print_json(
                    &serde_json::json!({"card": written, "reference": l.artifact.reference()}),
                );
            }
            println!("wrote {} for {}", written.display(), l.artifact.reference());
            Ok(())
        }
        RegistryCommand::Import { run_dir, register_as, by } => {
            let actor = ferrotune_govern::actor(by.as_deref());
            let imported = reg.import_run(&run_dir, register_as.as_deref(), &actor);
            let l = audited(
                &actor,
                "registry.import",
                serde_json::json!({"run_dir": run_dir}),
                &serde_json::json!({}),
                imported,
            )
            .with_context(|| format!("importing {}", run_dir.display()))?;
            if json {
                return print_json(&l);
            }
            println!(
                "imported {} as {} ({} evaluation(s))",
                run_dir.display(),
                l.artifact.reference(),
                l.evals.len()
            );
            Ok(())
        }
    }
}

/// Record a registry change (or its refusal) in the audit log, then hand the outcome on.
fn audited<T: serde::Serialize>(
    actor: &str,
    action: &str,
    subject: serde_json::Value,
    fields: &serde_json::Value,
    r: ferrotune_govern::Result<T>,
) -> anyhow::Result<T> {
    let mut fields = fields.clone();
    let outcome = match &r {
        Ok(v) => {
            fields["result"] = serde_json::to_value(v)?;
            "ok"
        }
        Err(e) => {
            fields["error"] = e.to_string().into();
            if matches!(e, ferrotune_govern::GovernError::Refused(_)) { "refused" } else { "failed" }
        }
    };
    crate::audit::trail(actor, action, subject, outcome, fields)?;
    Ok(r?)
}

fn report_promotion(name: &str, p: &Promotion, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(p);
    }
    match p {
        Promotion::Applied { request, alias, from_version, to_version } => {
            let from = from_version.map_or("nothing".to_string(), |v| format!("{name}@{v}"));
            println!("{name}@{alias} → {name}@{to_version} (was {from}; request {request})");
        }
        Promotion::Pending { request, needed } => {
            println!(
                "request {request} opened: waiting for {needed} approval(s) by someone else (`ferrotune registry approve {request} --by USER`)"
            );
        }
    }
    Ok(())
}

fn list(reg: &Registry, kind: Kind, json: bool) -> anyhow::Result<()> {
    match kind {
        Kind::Models => {
            let v = reg.models()?;
            if json {
                return print_json(&v);
            }
            for m in &v {
                let params = m
                    .parameters
                    .map(|p| format!("{:.1}M parameters", p as f64 / 1e6))
                    .unwrap_or_else(|| "parameters unknown".into());
                let sha = m.files.first().map(|f| &f.sha256[..12.min(f.sha256.len())]).unwrap_or("");
                println!(
                    "{:>4}  {}  {params}  {} file(s) sha256 {sha}…  {}",
                    m.id,
                    m.name,
                    m.files.len(),
                    m.created
                );
            }
        }
        Kind::Datasets => {
            let v = reg.datasets()?;
            if json {
                return print_json(&v);
            }
            for d in &v {
                let rows = d.rows.map(|r| format!("{r} rows")).unwrap_or_else(|| "rows ?".into());
                let pii = d.pii_findings.map(|p| format!("  PII findings {p}")).unwrap_or_default();
                let dups = d.duplicates.map(|p| format!("  duplicates {p}")).unwrap_or_default();
                println!(
                    "{:>4}  {}  {}  {rows}  sha256 {}…{pii}{dups}",
                    d.id,
                    d.path,
                    d.format.as_deref().unwrap_or("-"),
                    &d.sha256[..12.min(d.sha256.len())]
                );
            }
        }
        Kind::Runs => {
            let v = reg.runs()?;
            if json {
                return print_json(&v);
            }
            for r in &v {
                let status = serde_json::to_value(r.status)?.as_str().unwrap_or("?").to_string();
                let tokens = r.tokens.map(|t| format!("  {t} tokens")).unwrap_or_default();
                let flops = r.flops.as_ref().map(|f| format!("  {:.2e} FLOPs", f.value)).unwrap_or_default();
                println!(
                    "{:>4}  {:<24} {:<10} {}  by {}  {}{tokens}{flops}  → {}",
                    r.id, r.name, status, r.started, r.actor, r.device, r.register_as
                );
            }
        }
        Kind::Artifacts => {
            let v = reg.artifacts()?;
            if json {
                return print_json(&v);
            }
            if v.is_empty() {
                println!(
                    "no artifacts on record ({}); `ferrotune train` registers its output",
                    reg.path().display()
                );
            }
            for a in &v {
                let aliases = if a.aliases.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", a.aliases.join(", "))
                };
                let disabled = if a.disabled {
                    format!("  DISABLED: {}", a.disabled_reason.as_deref().unwrap_or(""))
                } else {
                    String::new()
                };
                let run = a.run.map(|r| format!("run {r}")).unwrap_or_else(|| "no run".into());
                println!(
                    "{:<24} {:?}  {run}  {}  {}{aliases}{disabled}",
                    a.reference(),
                    a.kind,
                    a.created,
                    a.path
                );
            }
        }
        Kind::Evals => {
            let v = reg.evals()?;
            if json {
                return print_json(&v);
            }
            for e in &v {
                let systems: Vec<String> = e
                    .systems
                    .iter()
                    .map(|(s, a)| match a {
                        Some(id) => format!("{} (artifact {id})", s.name),
                        None => s.name.clone(),
                    })
                    .collect();
                println!(
                    "{:>4}  {}  {} rows  {}  systems: {}  {}",
                    e.id,
                    e.data_path,
                    e.rows,
                    e.created,
                    systems.join(", "),
                    e.path
                );
            }
        }
        Kind::Aliases => {
            let v = reg.aliases()?;
            if json {
                return print_json(
                    &v.iter()
                        .map(|(n, a, ver)| serde_json::json!({"name": n, "alias": a, "version": ver}))
                        .collect::<Vec<_>>(),
                );
            }
            for (n, a, ver) in &v {
                println!("{n}@{a} → {n}@{ver}");
            }
        }
        Kind::Requests => {
            let v = reg.requests(false)?;
            if json {
                return print_json(&v);
            }
            for r in &v {
                let status = serde_json::to_value(r.status)?.as_str().unwrap_or("?").to_string();
                let approvals: Vec<&str> = r.approvals.iter().map(|(who, _)| who.as_str()).collect();
                println!(
                    "{:>4}  {}@{} → {:<10} {:<8} by {}  {}  approvals: [{}]  \"{}\"{}",
                    r.id,
                    r.name,
                    r.version,
                    r.alias,
                    status,
                    r.requester,
                    r.created,
                    approvals.join(", "),
                    r.reason,
                    r.decision_reason.as_deref().map(|d| format!("  ({d})")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
