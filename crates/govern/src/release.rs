//! Releases: promotion requests, approvals, rejections and the kill switch.
//!
//! Every decision is taken inside the write transaction that records it (`BEGIN IMMEDIATE`): the
//! approval that completes a request re-reads the version's kill switch and the alias's current
//! holder and moves the alias in the same transaction, so a concurrent `disable` either lands
//! before (and the approval is refused) or after (and the alias moved to a version that was live
//! at that moment). History keeps every step: who asked, who approved, from which version to which.

use rusqlite::{Connection, params};

use crate::db::Res;
use crate::error::{GovernError, Result};
use crate::gate::{self, GateData};
use crate::policy::Policy;
use crate::query::{alias_holder, request_in, request_status_str, resolve_in};
use crate::recording::{Event, now};
use crate::records::*;
use crate::registry::{Promotion, Reference, Registry, Selector, check_alias, check_name};

fn version_of(c: &Connection, name: &str, version: u32) -> Res<ArtifactRecord> {
    resolve_in(c, &Reference { name: name.into(), selector: Selector::Version(version) }, "")
}

fn disabled_message(a: &ArtifactRecord, alias: &str) -> String {
    format!(
        "{} is disabled ({}); a disabled version cannot take {alias} (ferrotune registry enable first)",
        a.reference(),
        a.disabled_reason.as_deref().unwrap_or("no reason recorded")
    )
}

/// Point `alias` at `a` (creating or moving it) and record `alias-set` with from → to.
fn move_alias(
    c: &Connection,
    a: &ArtifactRecord,
    alias: &str,
    actor: &str,
    request: i64,
    reason: &str,
) -> Res<Option<u32>> {
    let from = alias_holder(c, &a.name, alias)?;
    c.execute(
        "INSERT INTO aliases (name, alias, artifact, version, updated) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (name, alias) DO UPDATE SET artifact = excluded.artifact, version = excluded.version, updated = excluded.updated",
        params![a.name, alias, a.id, a.version, now()],
    )?;
    Event {
        version: Some(a.version),
        alias: Some(alias),
        from_version: from,
        to_version: Some(a.version),
        request: Some(request),
        reason: Some(reason),
        ..Event::new(actor, "alias-set", &a.name)
    }
    .insert(c)?;
    Ok(from)
}

/// Who asked for what, and (for a request decided on the spot) the outcome.
struct Ask<'a> {
    alias: &'a str,
    actor: &'a str,
    reason: &'a str,
}

fn insert_request(
    c: &Connection,
    a: &ArtifactRecord,
    ask: &Ask<'_>,
    status: RequestStatus,
    decision: Option<&str>,
) -> Res<i64> {
    let Ask { alias, actor, reason } = *ask;
    let decided = (status != RequestStatus::Open).then(now);
    c.execute(
        "INSERT INTO requests (name, version, alias, requester, reason, created, status, decided, decision_reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![a.name, a.version, alias, actor, reason, now(), request_status_str(status), decided, decision],
    )?;
    Ok(c.last_insert_rowid())
}

fn decide(c: &Connection, request: i64, status: RequestStatus, reason: Option<&str>) -> Res<()> {
    c.execute(
        "UPDATE requests SET status = ?2, decided = ?3, decision_reason = ?4 WHERE id = ?1",
        params![request, request_status_str(status), now(), reason],
    )?;
    Ok(())
}

fn refused(c: &Connection, a: &ArtifactRecord, alias: &str, actor: &str, request: i64, msg: &str) -> Res<()> {
    Event {
        version: Some(a.version),
        alias: Some(alias),
        request: Some(request),
        reason: Some(msg),
        ..Event::new(actor, "alias-refused", &a.name)
    }
    .insert(c)?;
    Ok(())
}

impl Registry {
    /// Ask for `alias` of `name` to point at `version`. Gates are checked now (a failure is
    /// recorded as a refused request); with no approvers required the alias moves at once,
    /// otherwise the request waits for approvals.
    pub fn promote(
        &self,
        name: &str,
        version: u32,
        alias: &str,
        reason: &str,
        actor: &str,
        policy: &Policy,
    ) -> Result<Promotion> {
        check_name("name", name)?;
        check_alias(alias)?;
        if reason.trim().is_empty() {
            return Err(GovernError::Invalid {
                field: "reason",
                reason: "say why (it is kept in the alias history)".into(),
            });
        }
        let rule = policy.rule(alias);
        let data = GateData::for_rule(&rule)?;
        let ask = Ask { alias, actor, reason };
        self.write_outcome(|c| {
            let a = version_of(c, name, version)?;
            if a.disabled {
                return Err(GovernError::Refused(disabled_message(&a, alias)).into());
            }
            if alias_holder(c, name, alias)? == Some(version) {
                return Err(
                    GovernError::Refused(format!("{alias} already points at {}", a.reference())).into()
                );
            }
            if let Some(msg) = gate::check(c, &a, alias, &rule, data.as_ref())? {
                let request = insert_request(c, &a, &ask, RequestStatus::Refused, Some(&msg))?;
                refused(c, &a, alias, actor, request, &msg)?;
                return Ok(Err(GovernError::Refused(msg)));
            }
            if rule.approvers == 0 {
                let request = insert_request(c, &a, &ask, RequestStatus::Applied, None)?;
                let from_version = move_alias(c, &a, alias, actor, request, reason)?;
                return Ok(Ok(Promotion::Applied {
                    request,
                    alias: alias.into(),
                    from_version,
                    to_version: version,
                }));
            }
            let request = insert_request(c, &a, &ask, RequestStatus::Open, None)?;
            Event {
                version: Some(version),
                alias: Some(alias),
                request: Some(request),
                reason: Some(reason),
                ..Event::new(actor, "promote-requested", name)
            }
            .insert(c)?;
            Ok(Ok(Promotion::Pending { request, needed: rule.approvers }))
        })
    }

    /// Approve an open request (not one's own; once per user). The approval that completes it
    /// re-checks the kill switch and the gates against the current holder and moves the alias,
    /// all in one transaction.
    pub fn approve(&self, request: i64, actor: &str, policy: &Policy) -> Result<Promotion> {
        let alias = self.request(request)?.alias;
        let rule = policy.rule(&alias);
        let data = GateData::for_rule(&rule)?;
        self.write_outcome(|c| {
            let req = request_in(c, request)?;
            if req.status != RequestStatus::Open {
                let status = request_status_str(req.status);
                return Err(GovernError::Refused(format!("request {request} is {status}, not open")).into());
            }
            if req.requester == actor {
                return Err(GovernError::Refused(format!(
                    "rule {alias} (approvers = {}): {actor} requested this promotion and cannot approve it; another user must",
                    rule.approvers
                ))
                .into());
            }
            if req.approvals.iter().any(|(who, _)| who == actor) {
                return Err(GovernError::Refused(format!(
                    "{actor} already approved request {request} (rule {alias} needs {} different approvers)",
                    rule.approvers
                ))
                .into());
            }
            c.execute("INSERT INTO approvals (request, actor, time) VALUES (?1, ?2, ?3)", params![request, actor, now()])?;
            Event {
                version: Some(req.version),
                alias: Some(&alias),
                request: Some(request),
                ..Event::new(actor, "approved", &req.name)
            }
            .insert(c)?;
            let count = req.approvals.len() as u32 + 1;
            if count < rule.approvers {
                return Ok(Ok(Promotion::Pending { request, needed: rule.approvers - count }));
            }
            let a = version_of(c, &req.name, req.version)?;
            let refusal = if a.disabled {
                Some(disabled_message(&a, &alias))
            } else if alias_holder(c, &req.name, &alias)? == Some(req.version) {
                Some(format!("{alias} already points at {}", a.reference()))
            } else {
                gate::check(c, &a, &alias, &rule, data.as_ref())?
            };
            if let Some(msg) = refusal {
                decide(c, request, RequestStatus::Refused, Some(&msg))?;
                refused(c, &a, &alias, actor, request, &msg)?;
                return Ok(Err(GovernError::Refused(msg)));
            }
            let from_version = move_alias(c, &a, &alias, actor, request, &req.reason)?;
            decide(c, request, RequestStatus::Applied, None)?;
            Ok(Ok(Promotion::Applied { request, alias, from_version, to_version: req.version }))
        })
    }

    /// Close an open request without moving the alias.
    pub fn reject(&self, request: i64, actor: &str, reason: &str) -> Result<PromotionRequest> {
        self.write(|c| {
            let req = request_in(c, request)?;
            if req.status != RequestStatus::Open {
                let status = request_status_str(req.status);
                return Err(GovernError::Refused(format!("request {request} is {status}, not open")).into());
            }
            let reason = Some(reason).filter(|r| !r.trim().is_empty());
            decide(c, request, RequestStatus::Rejected, reason)?;
            let event = Event::new(actor, "rejected", &req.name);
            Event {
                version: Some(req.version),
                alias: Some(&req.alias),
                request: Some(request),
                reason,
                ..event
            }
            .insert(c)?;
            request_in(c, request)
        })
    }

    /// Kill switch on: the version is not served and cannot be promoted or approved into an
    /// alias. Aliases stay where they are (the server refuses to serve a disabled version).
    pub fn disable(&self, name: &str, version: u32, reason: &str, actor: &str) -> Result<ArtifactRecord> {
        if reason.trim().is_empty() {
            let reason = "say why the version is disabled (it is shown to whoever asks for it)".into();
            return Err(GovernError::Invalid { field: "reason", reason });
        }
        self.set_disabled(name, version, true, reason, actor)
    }

    /// Kill switch off.
    pub fn enable(&self, name: &str, version: u32, reason: &str, actor: &str) -> Result<ArtifactRecord> {
        self.set_disabled(name, version, false, reason, actor)
    }

    /// Set or clear the flag; a version already in the asked state is returned as is (no event).
    fn set_disabled(
        &self,
        name: &str,
        version: u32,
        disable: bool,
        reason: &str,
        actor: &str,
    ) -> Result<ArtifactRecord> {
        self.write(|c| {
            let a = version_of(c, name, version)?;
            if a.disabled == disable {
                return Ok(a);
            }
            let reason = Some(reason.trim()).filter(|r| !r.is_empty());
            c.execute(
                "UPDATE artifacts SET disabled = ?2, disabled_reason = ?3 WHERE id = ?1",
                params![a.id, disable, if disable { reason } else { None }],
            )?;
            let action = if disable { "disabled" } else { "enabled" };
            Event { version: Some(version), reason, ..Event::new(actor, action, name) }.insert(c)?;
            version_of(c, name, version)
        })
    }
}
