//! `ferrotune keys` as an operator runs it: knowledge-base scope and concurrency at creation,
//! `update` of limits and scopes, and bad values refused with a clear message.

use std::process::{Command, Output};

fn keys(db: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_ferrotune")).arg("keys").arg("--db").arg(db).args(args).output()?)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn keys_get_kb_scopes_and_limits_that_update_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keys.db");
    let o = keys(&db, &["create", "--name", "bob", "--kbs", "policies,hr", "--max-concurrent", "8", "--tpm", "1000"])?;
    assert!(o.status.success(), "{}", text(&o));
    let secret = String::from_utf8(o.stdout.clone())?.trim().to_string();
    let store = ferrotune_serve::keys::KeyStore::open(&db)?;
    let k = store.lookup(&secret)?.expect("created");
    assert_eq!((k.kbs.clone(), k.max_concurrent, k.tpm), (vec!["policies".to_string(), "hr".to_string()], Some(8), Some(1000)));

    let o = keys(&db, &["update", "--name", "bob", "--tpm", "none", "--kbs", "*", "--rpm", "30"])?;
    assert!(o.status.success(), "{}", text(&o));
    let k = store.lookup(&secret)?.expect("still live");
    assert_eq!((k.kbs.clone(), k.tpm, k.rpm, k.max_concurrent), (vec!["*".to_string()], None, Some(30), Some(8)));
    let list = keys(&db, &["list"])?;
    let line = String::from_utf8(list.stdout)?.lines().find(|l| l.starts_with("bob")).map(str::to_string).expect("bob listed");
    assert!(line.contains(" * ") || line.contains("*"), "{line}");

    for bad in [
        &["update", "--name", "bob", "--max-concurrent", "0"][..],
        &["update", "--name", "nobody", "--rpm", "5"],
        &["update", "--name", "bob"],
        &["create", "--name", "zero", "--max-concurrent", "0"],
    ] {
        let o = keys(&db, bad)?;
        assert!(!o.status.success(), "{bad:?} succeeded");
        let t = text(&o);
        assert!(!t.contains("panicked"), "{t}");
        assert!(
            t.contains("max-concurrent") || t.contains("max_concurrent") || t.contains("nobody") || t.contains("nothing to change"),
            "{bad:?}: {t}"
        );
    }
    Ok(())
}
