//! Property tests of the canonical entry form (`Event::canonical`): whatever JSON goes in, the
//! line is one line, parses back, has its keys sorted at every level, has no floats and no
//! whitespace outside strings, and is a fixed point.
// A panic is how a test reports; unwrap on the values under test is the point.
#![allow(clippy::unwrap_used)]

use ferrotune_govern::audit::Event;
use proptest::prelude::*;
use serde_json::Value;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}|[\\n\\t\"\\\\\u{0}-\u{1f}é✓😀]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,6}|[\\n\"zé]{1,3}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Keys sorted (by code point) at every level, and no JSON number that is not an integer.
fn check(v: &Value) -> Result<(), String> {
    match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Err(format!("a float survived: {n}")),
        Value::Array(items) => items.iter().try_for_each(check),
        Value::Object(map) => {
            let keys: Vec<&String> = map.keys().collect();
            if !keys.windows(2).all(|w| w[0] < w[1]) {
                return Err(format!("keys out of order: {keys:?}"));
            }
            map.values().try_for_each(check)
        }
        _ => Ok(()),
    }
}

/// Whitespace outside strings (the line's own bytes, walking string literals by hand).
fn whitespace_outside_strings(line: &[u8]) -> bool {
    let (mut in_str, mut escaped) = (false, false);
    for &b in line {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
        } else if b == b'"' {
            in_str = true;
        } else if b.is_ascii_whitespace() {
            return true;
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn canonical_lines_are_sorted_integer_only_single_lines_and_fixed_points(
        subject in json(), fields in json(), actor in "\\PC{0,8}", time in "[0-9TZ:-]{0,20}"
    ) {
        let mut e = Event::new(&actor, "test.prop", subject, "ok", fields);
        e.time = time;
        let line = e.canonical();
        prop_assert!(!line.contains(&b'\n'));
        prop_assert!(!whitespace_outside_strings(&line), "{}", String::from_utf8_lossy(&line));
        let text = std::str::from_utf8(&line).unwrap();
        let parsed: Value = serde_json::from_str(text).unwrap();
        prop_assert_eq!(check(&parsed), Ok(()));
        let back: Event = serde_json::from_value(parsed).unwrap();
        prop_assert_eq!(back.canonical(), line);
    }
}

#[test]
fn floats_are_written_as_their_shortest_round_trip_strings() {
    for (f, s) in [
        (0.1, "0.1"),
        (1.0, "1"),
        (-2.5e-7, "-0.00000025"),
        (1e21, "1000000000000000000000"),
        (f64::MAX, &f64::MAX.to_string()),
    ] {
        let e = Event::new("a", "b", serde_json::json!(f), "ok", Value::Null);
        let line = String::from_utf8(e.canonical()).unwrap();
        assert!(line.contains(&format!("\"subject\":\"{s}\"")), "{f}: {line}");
        assert_eq!(s.parse::<f64>().unwrap(), f, "round trip");
    }
}
