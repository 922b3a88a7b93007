//! The watcher: every `poll_ms` it reads the registry's generation (on the blocking pool: the
//! SQLite connection is synchronous) and, when it moved, a new [`Snapshot`]; then it applies the
//! kill switch — every loaded version that is now disabled (or gone from the registry) is
//! disabled in the engine, which ends its sequences with `finish_reason: "disabled"` at the next
//! step, and unloaded. Alias moves need nothing more: new requests resolve through the new
//! snapshot, and requests in flight finish on the version they started on. A registry that
//! cannot be read keeps the last snapshot in use (logged once).

use std::sync::Arc;

use super::RegistryServing;
use super::snapshot::{Snapshot, parse_loaded_name};
use crate::app::AppState;

/// Read the registry once now (so the first request already sees it), then poll it for as long
/// as the server runs; the task ends when the server begins shutting down.
pub async fn start(state: &AppState, reg: Arc<RegistryServing>) {
    refresh(state, &reg).await;
    let (state, reg) = (state.clone(), reg);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(reg.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if state.is_shutting_down() {
                return;
            }
            refresh(&state, &reg).await;
        }
    });
}

/// One poll: a new snapshot if the generation moved, then the kill switch.
pub async fn refresh(state: &AppState, reg: &Arc<RegistryServing>) {
    let r = reg.clone();
    let polled = tokio::task::spawn_blocking(move || r.poll_blocking())
        .await
        .unwrap_or_else(|e| Err(format!("the poll failed: {e}")));
    match polled {
        Ok(None) => reg.note_poll(Ok(())),
        Ok(Some(new)) => {
            reg.note_poll(Ok(()));
            apply(state, reg, new);
        }
        Err(e) => reg.note_poll(Err(&e)),
    }
}

fn apply(state: &AppState, reg: &RegistryServing, new: Snapshot) {
    let old = reg.snapshot();
    for (alias, from, to) in old.alias_changes(&new) {
        let v = |x: Option<u32>| x.map_or_else(|| "-".to_string(), |v| v.to_string());
        tracing::info!(alias = %alias, from = %v(from), to = %v(to), "registry alias moved");
    }
    // The snapshot first, then the engine: a version loading right now checks the snapshot once
    // loaded (`ensure_loaded`), so either it or this pass disables it.
    let new = Arc::new(new);
    reg.set_snapshot(new.clone());
    for loaded in state.engine.adapters() {
        let Some((name, version)) = parse_loaded_name(&loaded) else { continue };
        let why = match new.version(name, version) {
            None => "no longer in the registry".to_string(),
            Some(a) if a.disabled => a.disabled_reason.clone().unwrap_or_else(|| "no reason recorded".into()),
            Some(_) => continue,
        };
        if state.engine.disable_adapter(&loaded) {
            state.weights.remove_adapter(&loaded);
            // The kill switch: the server acts on the registry's word (who disabled it is in the
            // registry's own record).
            let reason = format!("kill switch: {why}");
            state.audit.record(crate::audit::events::adapter_unload(
                &crate::audit::events::server_actor(),
                &loaded,
                Some(&loaded),
                &reason,
            ));
            tracing::warn!(artifact = %loaded, reason = %why, "registry version disabled: its in-flight requests end now and it is unloaded");
        }
    }
}
