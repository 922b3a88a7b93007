//! Several processes share one registry file: each opens its own connection here (one per
//! thread), as train, eval, serve and the CLI do.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use ferrotune_govern::*;

#[test]
fn two_registries_registering_one_name_at_once_get_versions_one_to_forty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let reg = Registry::open(&path).unwrap();
                barrier.wait();
                (0..20).map(|i| artifact(&reg, "support", &format!("t{t}-{i}")).version).collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut versions: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<u32>>());
    let reg = Registry::open(&path).unwrap();
    let mut stored: Vec<u32> = reg.artifacts().unwrap().into_iter().map(|a| a.version).collect();
    stored.sort_unstable();
    assert_eq!(stored, (1..=40).collect::<Vec<u32>>());
    assert_eq!(reg.check().unwrap(), Vec::<String>::new());
}

/// A small delay that differs by round and side, so either side wins some rounds.
fn jitter(round: u32, side: u32) -> std::time::Duration {
    std::time::Duration::from_micros(u64::from((round * 7 + side * 3) % 5) * 300)
}

#[test]
fn an_approval_racing_a_disable_never_moves_an_alias_to_a_version_already_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let reg = Registry::open(&path).unwrap();
    let p = Policy::default();
    let (mut applied, mut refused) = (0, 0);
    for round in 1..=40u32 {
        let v = artifact(&reg, "support", &format!("r{round}")).version;
        let Promotion::Pending { request, .. } =
            reg.promote("support", v, "champion", "race", "alice", &p).unwrap()
        else {
            panic!("champion needs an approval")
        };
        let barrier = Arc::new(Barrier::new(2));
        let approver = {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let reg = Registry::open(&path).unwrap();
                barrier.wait();
                std::thread::sleep(jitter(round, 0));
                reg.approve(request, "bob", &Policy::default())
            })
        };
        let disabler = {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let reg = Registry::open(&path).unwrap();
                barrier.wait();
                std::thread::sleep(jitter(round, 1));
                reg.disable("support", v, "kill switch", "carol")
            })
        };
        let approved = approver.join().unwrap();
        disabler.join().unwrap().unwrap();
        let status = reg.request(request).unwrap().status;
        match approved {
            Ok(Promotion::Applied { to_version, .. }) => {
                assert_eq!((to_version, status), (v, RequestStatus::Applied));
                applied += 1;
            }
            Err(GovernError::Refused(m)) => {
                assert!(m.contains("disabled"), "{m}");
                assert_eq!(status, RequestStatus::Refused);
                refused += 1;
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    // Replay the history: when an alias moved to V, V must not have been disabled at that point.
    let mut disabled = std::collections::HashSet::new();
    let mut moves = 0;
    for e in reg.history("support").unwrap() {
        match e.action.as_str() {
            "disabled" => {
                disabled.insert(e.version);
            }
            "enabled" => {
                disabled.remove(&e.version);
            }
            "alias-set" => {
                assert!(
                    !disabled.contains(&e.to_version),
                    "event {}: alias moved to disabled version {:?}",
                    e.id,
                    e.to_version
                );
                moves += 1;
            }
            _ => {}
        }
    }
    assert_eq!((moves, applied + refused), (applied, 40));
    assert_eq!(reg.check().unwrap(), Vec::<String>::new());
    eprintln!("approval won {applied} rounds, disable won {refused}");
}
