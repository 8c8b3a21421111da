//! How deeply a JSON value nests, without building it.
//!
//! Payloads are carried as raw JSON and never parsed by the server, but
//! the clients that receive them do parse them, and common parsers give up
//! on deep nesting (Python's at about 1,000 levels, serde_json at 128).

/// Whether the valid JSON text `raw` nests arrays and objects deeper than
/// `max` levels (`{}` and `[]` are one level; scalars are zero).
/// Stops at the first bracket past `max`; never panics on any input.
pub fn nests_deeper_than(raw: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in raw.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_brackets_outside_strings() {
        assert!(!nests_deeper_than("1", 0));
        assert!(nests_deeper_than("[]", 0));
        assert!(!nests_deeper_than("[]", 1));
        assert!(!nests_deeper_than(r#"{"a":[1,{"b":2}],"c":[]}"#, 3));
        assert!(nests_deeper_than(r#"{"a":[1,{"b":[2]}]}"#, 3));
        assert!(!nests_deeper_than(r#""[[[[""#, 1));
        assert!(!nests_deeper_than(r#"["\"[[[", "\\"]"#, 1));
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(nests_deeper_than(&deep, 64));
        assert!(!nests_deeper_than(&deep, 10_000));
    }

    proptest! {
        #[test]
        fn agrees_with_a_parser(depth in 0usize..40, max in 0usize..40) {
            let text = "[".repeat(depth) + &"]".repeat(depth);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
            fn measure(v: &serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Array(a) => 1 + a.iter().map(measure).max().unwrap_or(0),
                    serde_json::Value::Object(o) => 1 + o.values().map(measure).max().unwrap_or(0),
                    _ => 0,
                }
            }
            prop_assert_eq!(nests_deeper_than(&text, max), measure(&v) > max);
        }

        #[test]
        fn never_panics(s in ".{0,200}", max in 0usize..8) {
            let _ = nests_deeper_than(&s, max);
        }
    }
}
