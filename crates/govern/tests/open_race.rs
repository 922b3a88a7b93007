//! Processes starting at once on a fresh `$FERROTUNE_HOME` (two `train`s, a server and a CLI)
//! all open the same new registry file: none may fail with "database is locked".

use ferrotune_govern::Registry;

#[test]
fn eight_connections_opening_a_new_registry_at_once_all_succeed() -> anyhow::Result<()> {
    for round in 0..20 {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("home").join("registry.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Registry::open(&path).and_then(|r| r.generation()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for h in handles {
            let r = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?;
            anyhow::ensure!(r.is_ok(), "round {round}: {r:?}");
        }
    }
    Ok(())
}
