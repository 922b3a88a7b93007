//! C2SP signed notes and checkpoints with Ed25519: interoperability with Go's
//! `golang.org/x/mod/sumdb/note` (its published keys and notes, `golang/mod`
//! `sumdb/note/note_test.go` and `note.go`'s package documentation, commit fe2ec04f), the formats
//! recomputed here from the specs (C2SP `signed-note.md`, `tlog-checkpoint.md`), tampering, and
//! the key file on disk.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ferrotune_govern::GovernError;
use ferrotune_govern::audit::merkle::{leaf_hash, root};
use ferrotune_govern::audit::note::{Checkpoint, SigningKey, Verifier, key_id};
use sha2::{Digest, Sha256};

// Go's note_test.go.
const PETER_SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str =
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const PETER_SIG: &str = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn message(err: GovernError) -> String {
    err.to_string()
}

fn checkpoint(size: u64) -> Checkpoint {
    let leaves: Vec<_> = (0..size).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect();
    Checkpoint { origin: "ferrotune.example/audit".into(), size, root: root(&leaves) }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn go_published_note_verifies_with_our_verifier() {
    let v = Verifier::parse(PETER_VKEY).expect("Go's verifier key parses");
    assert_eq!(v.name(), "PeterNeumann");
    assert_eq!(v.key_id(), 0xc74f20a3);
    let note = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(v.open(&note).expect("Go's signed note verifies"), TEXT);
    // Not a checkpoint: the signature is fine, the body is not.
    let err = message(v.verify(&note).expect_err("a poem is no checkpoint"));
    assert!(err.contains("2 line(s)"), "{err}");
}

#[test]
fn go_signer_key_signs_the_published_note_byte_for_byte() {
    // Ed25519 is deterministic, so the same key must give Go's exact bytes.
    let k = SigningKey::from_private_key_text(PETER_SKEY).expect("Go's signer key parses");
    assert_eq!(k.verifier_key(), PETER_VKEY);
    assert_eq!(k.sign_text(TEXT).expect("text ends in newline"), format!("{TEXT}\n{PETER_SIG}"));
    assert!(k.sign_text("no newline").is_err());

    // The same key as a key file (Go's format is ours).
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    fs::create_dir(&keys).expect("mkdir");
    let path = keys.join("signing.key");
    fs::write(&path, format!("{PETER_SKEY}\n")).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    let loaded = SigningKey::load_or_create(&keys, "PeterNeumann").expect("loads Go's key file");
    assert_eq!(loaded.verifier_key(), PETER_VKEY);
    assert_eq!(
        fs::read_to_string(keys.join("verifier.key")).expect("verifier.key"),
        format!("{PETER_VKEY}\n")
    );
}

#[test]
fn go_doubly_signed_note_verifies_with_either_key() {
    let note = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    for vkey in [PETER_VKEY, ENOCH_VKEY] {
        let v = Verifier::parse(vkey).expect("parses");
        assert_eq!(v.open(&note).expect("verifies"), TEXT, "{vkey}");
    }
    // Duplicated lines (Go's TestOpen): the first line by our key counts, unknown keys are skipped,
    // even one carrying a broken signature.
    let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
    let note = format!("{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{enoch_abcd}");
    assert_eq!(Verifier::parse(PETER_VKEY).expect("parses").open(&note).expect("verifies"), TEXT);
}

#[test]
fn go_malformed_notes_are_refused() {
    let v = Verifier::parse(PETER_VKEY).expect("parses");
    let bad = [
        TEXT.to_string(),
        format!("{TEXT}\n"),
        format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
        format!("\x01{TEXT}\n{PETER_SIG}"),
        format!(
            "{TEXT}\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        ),
        format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
        format!("{TEXT}\n{}", PETER_SIG.repeat(101)),
    ];
    for note in &bad {
        assert!(v.open(note).is_err(), "accepted {note:?}");
    }
    // Go's "invalid signature" case: our key's line with a changed signature.
    let forged = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    let err = message(v.open(&forged).expect_err("forged"));
    assert!(err.contains("bad signature by PeterNeumann+c74f20a3"), "{err}");
    // Only Enoch signed: unsigned by Peter, and the message lists who did sign.
    let err = message(v.open(&format!("{TEXT}\n{ENOCH_SIG}")).expect_err("unsigned"));
    assert!(err.contains("unsigned by PeterNeumann+c74f20a3") && err.contains("EnochRoot+af0cfe78"), "{err}");
}

#[test]
fn go_verifier_key_manglings_are_refused() {
    // Go's TestNewVerifier: every proper substring and every single-byte increment fails.
    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i != 0 || j != b.len() {
                let s = std::str::from_utf8(&b[i..j]).expect("ascii");
                assert!(Verifier::parse(s).is_err(), "accepted substring {s:?}");
            }
        }
    }
    let mut m = b.to_vec();
    for i in 0..m.len() {
        m[i] += 1;
        let s = String::from_utf8(m.clone()).expect("ascii");
        assert!(Verifier::parse(&s).is_err(), "accepted {s:?}");
        m[i] -= 1;
    }
    let err = message(
        Verifier::parse("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
            .expect_err("long key"),
    );
    // Go's decoder allows the non-zero trailing bits of this text; ours (strict) refuses earlier.
    assert!(err.contains("not 32") || err.contains("not standard base64"), "{err}");
    let err = message(
        Verifier::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .expect_err("algorithm"),
    );
    assert!(err.contains("algorithm byte 0x65"), "{err}");
}

#[test]
fn verifier_key_errors_say_what_is_wrong() {
    let cases = [
        ("PeterNeumann", "missing parts"),
        ("PeterNeumann+c74f20a3", "missing parts"),
        ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hex digits"),
        ("PeterNeumann+c74f20ag+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not 8 hex digits"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "wrong key id c74f20a4"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T!", "not standard base64"),
        ("PeterNeumann+c74f20a3+", "missing"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "contains ' '"),
        ("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name is empty"),
    ];
    for (vkey, want) in cases {
        let err = message(Verifier::parse(vkey).expect_err(vkey));
        assert!(err.contains(want), "{vkey}: {err}");
    }
    // The file's trailing newline is fine.
    assert!(Verifier::parse(&format!("{PETER_VKEY}\n")).is_ok());
}

#[test]
fn key_id_and_verifier_key_text_match_the_spec_computed_here() {
    let seed = [7u8; 32];
    let name = "ferrotune.example/audit";
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    // signed-note.md: key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4].
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([0x0a, 0x01])
        .chain_update(public)
        .finalize();
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    assert_eq!(key_id(name, &public), id);
    let skey = format!("PRIVATE+KEY+{name}+{id:08x}+{}", B64.encode([&[1u8][..], &seed].concat()));
    let k = SigningKey::from_private_key_text(&skey).expect("parses");
    assert_eq!(k.key_id(), id);
    let want = format!("{name}+{id:08x}+{}", B64.encode([&[1u8][..], &public].concat()));
    assert_eq!(k.verifier_key(), want);

    // The note: body, blank line, `— name base64(id || Ed25519(body))`.
    let cp = checkpoint(3);
    let body = format!("{}\n3\n{}\n", cp.origin, B64.encode(cp.root));
    assert_eq!(cp.body(), body);
    use ed25519_dalek::Signer as _;
    let sig = ed25519_dalek::SigningKey::from_bytes(&seed).sign(body.as_bytes()).to_bytes();
    let line = format!("\u{2014} {name} {}\n", B64.encode([&id.to_be_bytes()[..], &sig].concat()));
    assert_eq!(k.sign(&cp), format!("{body}\n{line}"));
}

#[test]
fn signed_checkpoint_roundtrips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = SigningKey::load_or_create(dir.path(), "ferrotune.example/audit").expect("creates");
    let v = Verifier::parse(&k.verifier_key()).expect("parses");
    assert_eq!(k.verifier(), v);
    for size in [0, 1, 2, 7, 1000] {
        let cp = checkpoint(size);
        assert_eq!(v.verify(&k.sign(&cp)).expect("verifies"), cp);
    }
}

#[test]
fn tampered_notes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = SigningKey::load_or_create(dir.path(), "ferrotune.example/audit").expect("creates");
    let v = k.verifier();
    let cp = checkpoint(5);
    let note = k.sign(&cp);
    let other_root = B64.encode(checkpoint(4).root);
    let tampered = [
        ("origin", note.replacen("ferrotune.example/audit\n", "ferrotune.example/other\n", 1)),
        ("size", note.replacen("\n5\n", "\n6\n", 1)),
        ("root", note.replacen(&B64.encode(cp.root), &other_root, 1)),
        ("body", note.replacen("\n5\n", "\n5\nextension\n", 1)),
    ];
    for (what, t) in &tampered {
        assert_ne!(t, &note, "{what} was changed");
        let err = message(v.verify(t).expect_err(what));
        assert!(err.contains("bad signature"), "{what}: {err}");
    }
    // Any change of the signature's base64 (keeping it base64).
    let sig_at = note.rfind(' ').expect("signature") + 1;
    for i in sig_at + 6..note.len() - 3 {
        let mut b = note.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).expect("ascii");
        if t != note {
            assert!(v.verify(&t).is_err(), "signature byte {i} changed");
        }
    }
    // A changed key id is another (unknown) key: unsigned by ours.
    let mut raw = B64.decode(note[sig_at..].trim_end()).expect("b64");
    raw[0] ^= 1;
    let t = format!("{}{}\n", &note[..sig_at], B64.encode(raw));
    let err = message(v.verify(&t).expect_err("key id"));
    assert!(err.contains("unsigned by"), "{err}");
    // A signature line cut short of 64 signature bytes.
    let short = format!(
        "{}{}\n",
        &note[..sig_at],
        B64.encode(&B64.decode(note[sig_at..].trim_end()).expect("b64")[..40])
    );
    let err = message(v.verify(&short).expect_err("short"));
    assert!(err.contains("not 64"), "{err}");
}

#[test]
fn a_note_signed_by_another_key_is_refused_and_cosigned_notes_verify() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let ours = SigningKey::load_or_create(a.path(), "ferrotune.example/audit").expect("creates");
    let theirs = SigningKey::load_or_create(b.path(), "witness.example").expect("creates");
    let same_name =
        SigningKey::load_or_create(&b.path().join("x"), "ferrotune.example/audit").expect("creates");
    let cp = checkpoint(9);
    for other in [&theirs, &same_name] {
        let err = message(ours.verifier().verify(&other.sign(&cp)).expect_err("other key"));
        assert!(err.contains("unsigned by ferrotune.example/audit+"), "{err}");
    }
    // Their signature first, ours appended (a witness cosigning in reverse order).
    let theirs_note = theirs.sign(&cp);
    let ours_line = ours.sign(&cp).rsplit_once("\n\n").expect("split").1.to_string();
    let both = format!("{theirs_note}{ours_line}");
    assert_eq!(ours.verifier().verify(&both).expect("ours verifies"), cp);
    assert_eq!(theirs.verifier().verify(&both).expect("theirs verifies"), cp);
}

#[test]
fn checkpoint_bodies_are_parsed_exactly() {
    let root = B64.encode([9u8; 32]);
    let ok = Checkpoint::parse(&format!("o\n12\n{root}\n")).expect("parses");
    assert_eq!((ok.origin.as_str(), ok.size, ok.root), ("o", 12, [9u8; 32]));
    assert_eq!(Checkpoint::parse(&format!("o\n0\n{root}\next one\next two\n")).expect("extensions").size, 0);
    let cases = [
        (format!("o\n12\n{root}"), "does not end in a newline"),
        ("o\n12\n".to_string(), "2 line(s)"),
        (format!("\n12\n{root}\n"), "line 1 (origin)"),
        (format!("o\n012\n{root}\n"), "line 2 (tree size)"),
        (format!("o\n+12\n{root}\n"), "line 2 (tree size)"),
        (format!("o\n\n{root}\n"), "line 2 (tree size)"),
        (format!("o\n99999999999999999999\n{root}\n"), "line 2 (tree size)"),
        ("o\n12\nnot base64!\n".to_string(), "line 3 (root hash)"),
        (format!("o\n12\n{}\n", B64.encode([9u8; 31])), "31 bytes"),
        (format!("o\n12\n{root}\n\next\n"), "line 4 (extension)"),
    ];
    for (body, want) in cases {
        let err = message(Checkpoint::parse(&body).expect_err(&body));
        assert!(err.contains(want), "{body:?}: {err}");
    }
}

#[test]
fn key_file_is_0600_in_a_0700_folder_with_the_verifier_key_beside_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("audit").join("keys");
    let k = SigningKey::load_or_create(&dir, "ferrotune.example/audit").expect("creates");
    assert_eq!(mode(&dir.join("signing.key")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        fs::read_to_string(dir.join("verifier.key")).expect("verifier.key"),
        format!("{}\n", k.verifier_key())
    );
    let text = fs::read_to_string(dir.join("signing.key")).expect("signing.key");
    assert!(text.starts_with(&format!("PRIVATE+KEY+ferrotune.example/audit+{:08x}+", k.key_id())), "{text}");
    // Loaded again: the same key, and a deleted verifier.key comes back.
    fs::remove_file(dir.join("verifier.key")).expect("rm");
    let again = SigningKey::load_or_create(&dir, "ferrotune.example/audit").expect("loads");
    assert_eq!(again.verifier_key(), k.verifier_key());
    assert!(dir.join("verifier.key").exists());
    let names: Vec<_> = fs::read_dir(&dir).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 2, "no temp files left: {names:?}");
    // Debug output never shows the seed.
    assert!(!format!("{k:?}").contains(text.trim().rsplit('+').next().expect("seed")));
}

#[test]
fn key_files_others_can_read_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    SigningKey::load_or_create(dir.path(), "log").expect("creates");
    let path = dir.path().join("signing.key");
    for bad in [0o640, 0o604, 0o660, 0o644] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).expect("chmod");
        let err = message(SigningKey::load_or_create(dir.path(), "log").expect_err("loose mode"));
        assert!(err.contains("chmod 600") && err.contains(&format!("{bad:04o}")), "{err}");
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
    assert!(SigningKey::load_or_create(dir.path(), "log").is_ok(), "read-only for the owner is fine");
}

#[test]
fn a_key_named_otherwise_or_malformed_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    SigningKey::load_or_create(dir.path(), "first.example").expect("creates");
    let err = message(SigningKey::load_or_create(dir.path(), "second.example").expect_err("other name"));
    assert!(err.contains("first.example") && err.contains("second.example"), "{err}");

    let path = dir.path().join("signing.key");
    let garbage = [
        ("hello\n", "format"),
        ("PRIVATE+KEY+log+00000000\n", "format"),
        ("PRIVATE+KEY+log+zz+AQ==\n", "key id"),
        ("PRIVATE+KEY+log+00000000+AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", "algorithm byte 0x02"),
        ("PRIVATE+KEY+log+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", "does not belong"),
    ];
    for (text, field) in garbage {
        fs::write(&path, text).expect("write");
        match SigningKey::load_or_create(dir.path(), "log") {
            Err(GovernError::BadFile { path: p, field: f, reason }) => {
                assert_eq!(p, path);
                assert!(f.contains(field) || reason.contains(field), "{text:?}: {f}: {reason}");
            }
            other => panic!("{text:?}: expected BadFile, got {other:?}"),
        }
    }
    for name in ["", "a b", "a+b", "tab\there"] {
        assert!(SigningKey::load_or_create(&dir.path().join("n"), name).is_err(), "name {name:?}");
    }
}

#[test]
fn concurrent_creators_end_with_one_key() {
    for round in 0..20 {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = Arc::new(home.path().join("keys"));
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (dir, barrier) = (Arc::clone(&dir), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    SigningKey::load_or_create(&dir, "race.example").map(|k| k.verifier_key())
                })
            })
            .collect();
        let keys: Vec<String> =
            handles.into_iter().map(|h| h.join().expect("thread").expect("load_or_create")).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "round {round}: {keys:?}");
        let on_disk = SigningKey::load_or_create(&dir, "race.example").expect("loads").verifier_key();
        assert_eq!(on_disk, keys[0]);
        assert_eq!(
            fs::read_to_string(dir.join("verifier.key")).expect("verifier.key"),
            format!("{on_disk}\n")
        );
        assert_eq!(fs::read_dir(dir.as_path()).expect("ls").count(), 2, "round {round}: temp files left");
    }
}

#[test]
fn control_characters_and_missing_blank_line_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = SigningKey::load_or_create(dir.path(), "log").expect("creates");
    let v = k.verifier();
    let bad_origin = Checkpoint { origin: "a\rb".into(), ..checkpoint(1) };
    let err = message(v.verify(&k.sign(&bad_origin)).expect_err("control character"));
    assert!(err.contains("control character"), "{err}");
    let newline_origin = Checkpoint { origin: "a\nb".into(), ..checkpoint(1) };
    assert!(v.verify(&k.sign(&newline_origin)).is_err(), "an origin with a newline shifts every line");
    let note = k.sign(&checkpoint(1));
    assert!(v.verify(&note.replacen("\n\n", "\n", 1)).is_err());
}
