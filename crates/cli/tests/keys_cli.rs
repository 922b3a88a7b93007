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
    let o = keys(
        &db,
        &["create", "--name", "bob", "--kbs", "policies,hr", "--max-concurrent", "8", "--tpm", "1000"],
    )?;
    assert!(o.status.success(), "{}", text(&o));
    let secret = String::from_utf8(o.stdout.clone())?.trim().to_string();
    let store = ferrotune_serve::keys::KeyStore::open(&db)?;
    let k = store.lookup(&secret)?.expect("created");
    assert_eq!(
        (k.kbs.clone(), k.max_concurrent, k.tpm),
        (vec!["policies".to_string(), "hr".to_string()], Some(8), Some(1000))
    );

    let o = keys(&db, &["update", "--name", "bob", "--tpm", "none", "--kbs", "*", "--rpm", "30"])?;
    assert!(o.status.success(), "{}", text(&o));
    let k = store.lookup(&secret)?.expect("still live");
    assert_eq!(
        (k.kbs.clone(), k.tpm, k.rpm, k.max_concurrent),
        (vec!["*".to_string()], None, Some(30), Some(8))
    );
    let list = keys(&db, &["list"])?;
    let line = String::from_utf8(list.stdout)?
        .lines()
        .find(|l| l.starts_with("bob"))
        .map(str::to_string)
        .expect("bob listed");
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
            t.contains("max-concurrent")
                || t.contains("max_concurrent")
                || t.contains("nobody")
                || t.contains("nothing to change"),
            "{bad:?}: {t}"
        );
    }
    Ok(())
}

#[test]
fn the_logprobs_permission_is_off_by_default_granted_at_creation_and_changed_by_update() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("keys.db");
    let secret = |o: &Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    let plain = keys(&db, &["create", "--name", "plain"])?;
    assert!(plain.status.success(), "{}", text(&plain));
    let scorer = keys(&db, &["create", "--name", "scorer", "--logprobs"])?;
    assert!(scorer.status.success(), "{}", text(&scorer));
    let store = ferrotune_serve::keys::KeyStore::open(&db)?;
    assert!(!store.lookup(&secret(&plain))?.expect("created").logprobs);
    assert!(store.lookup(&secret(&scorer))?.expect("created").logprobs);
    let listed = |name: &str| -> anyhow::Result<String> {
        let list = keys(&db, &["list"])?;
        Ok(String::from_utf8(list.stdout)?
            .lines()
            .find(|l| l.starts_with(name))
            .map(str::to_string)
            .unwrap_or_default())
    };
    assert!(listed("scorer")?.contains("yes"), "{}", listed("scorer")?);

    let o = keys(&db, &["update", "--name", "plain", "--logprobs", "true"])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(store.lookup(&secret(&plain))?.expect("live").logprobs);
    let o = keys(&db, &["update", "--name", "scorer", "--logprobs", "false"])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!store.lookup(&secret(&scorer))?.expect("live").logprobs);
    let o = keys(&db, &["update", "--name", "plain", "--logprobs", "maybe"])?;
    assert!(!o.status.success());
    assert!(text(&o).contains("--logprobs"), "{}", text(&o));
    Ok(())
}
