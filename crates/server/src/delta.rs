//! Delta compression (`delta: "fossil"` on subscribe): a subscription that
//! asks gets each publication's payload as a Fossil delta against the
//! channel's previous one, when it has that one; else the payload's JSON
//! text as a string, which the client keeps as the next delta's base.
//!
//! Both forms are made once per publication, by the first delta subscriber
//! that needs them, and shared like any encoded push; which form a
//! subscriber gets is decided where it is queued ([`crate::hub`]), from the
//! last offset queued to it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use tidings_protocol::{PubStyle, Publication, encode_pub_as};

use crate::outbox::{Entry, Form, Mode};

/// `data` as a JSON string holding its text: what a delta subscription
/// gets instead of the value, so that it has the exact bytes deltas apply to.
pub fn as_text(data: &RawValue) -> Box<RawValue> {
    // A string of valid JSON text always encodes, and always parses back.
    serde_json::value::to_raw_value(data.get())
        .unwrap_or_else(|_| RawValue::from_string("\"\"".into()).unwrap_or_default())
}

/// A Fossil delta turning `base` into `target`, as a JSON string; None
/// when it would not be smaller than `target` or is not valid UTF-8 (a
/// JSON string must be).
pub fn fossil(base: &str, target: &str) -> Option<Box<RawValue>> {
    let delta = fossil_delta::delta(target, base);
    if delta.len() >= target.len() {
        return None;
    }
    let text = std::str::from_utf8(&delta).ok()?;
    serde_json::value::to_raw_value(text).ok()
}

/// Whether offset `b` comes right after `a`.
fn follows(a: Option<u64>, b: Option<u64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a + 1 == b)
}

/// A publication's two forms for delta subscriptions.
#[derive(Debug)]
pub struct DeltaForms {
    channel: Arc<str>,
    epoch: Option<Arc<str>>,
    style: PubStyle,
    publication: Arc<Publication>,
    /// The channel's previous publication, when it is the one just before.
    base: Option<Arc<Publication>>,
    full: OnceLock<Bytes>,
    delta: OnceLock<Option<Bytes>>,
    full_msgpack: OnceLock<Option<Bytes>>,
    delta_msgpack: OnceLock<Option<Bytes>>,
}

impl PartialEq for DeltaForms {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for DeltaForms {}

impl DeltaForms {
    /// The forms of `publication`, whose channel's previous publication
    /// was `previous` (used only when its offset is the one just before).
    pub fn new(
        channel: Arc<str>,
        epoch: Option<&str>,
        style: PubStyle,
        publication: Arc<Publication>,
        previous: Option<Arc<Publication>>,
    ) -> Self {
        Self {
            channel,
            epoch: epoch.map(Arc::from),
            style,
            base: previous.filter(|prev| follows(prev.offset, publication.offset)),
            publication,
            full: OnceLock::new(),
            delta: OnceLock::new(),
            full_msgpack: OnceLock::new(),
            delta_msgpack: OnceLock::new(),
        }
    }

    /// Where the MessagePack encoding of the delta (or full) form is kept.
    pub fn msgpack(&self, delta: bool) -> &OnceLock<Option<Bytes>> {
        if delta {
            &self.delta_msgpack
        } else {
            &self.full_msgpack
        }
    }

    /// The push with the payload as text.
    fn full(&self) -> Bytes {
        self.full
            .get_or_init(|| {
                let p = &self.publication;
                let data = as_text(&p.data);
                encode_pub_as(
                    &self.channel,
                    self.epoch.as_deref(),
                    p,
                    self.style,
                    &data,
                    Some(false),
                )
            })
            .clone()
    }

    /// The push with a delta against the previous publication, if that
    /// is worth it.
    fn delta(&self) -> Option<Bytes> {
        self.delta
            .get_or_init(|| {
                let base = self.base.as_ref()?;
                let p = &self.publication;
                let data = fossil(base.data.get(), p.data.get())?;
                let epoch = self.epoch.as_deref();
                Some(encode_pub_as(
                    &self.channel,
                    epoch,
                    p,
                    self.style,
                    &data,
                    Some(true),
                ))
            })
            .clone()
    }
}

/// What a delta subscription that was last queued `last` gets for
/// `entry`: a delta when it has the previous publication, else the full
/// form. Entries without forms (not publications) pass unchanged.
pub fn form_for(entry: &Entry, last: Option<u64>) -> Entry {
    let Some(meta) = entry.publication.as_deref() else {
        return entry.clone();
    };
    // A namespace reloaded to one that may drop or conflate: plain pushes
    // (the client reads them as they are), never a delta on a missing base.
    let (Some(forms), Mode::Stream, None) = (&meta.delta, meta.mode, meta.interval) else {
        return entry.clone();
    };
    let (bytes, form) = match follows(last, forms.publication.offset)
        .then(|| forms.delta())
        .flatten()
    {
        Some(delta) => (delta, Form::Delta),
        None => (forms.full(), Form::Full),
    };
    Entry {
        bytes,
        form,
        ..entry.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[a-zé€😀 \"\\\\]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Applying the deltas in order reproduces every payload exactly
        /// (where no delta is sent, the full text is).
        #[test]
        fn deltas_reproduce_every_payload(values in proptest::collection::vec(json_value(), 1..20)) {
            let mut base: Option<String> = None;
            for v in values {
                let target = serde_json::to_string(&v).unwrap();
                let got = match base.as_deref().and_then(|b| fossil(b, &target).map(|d| (b, d))) {
                    Some((b, d)) => {
                        let delta: String = serde_json::from_str(d.get()).unwrap();
                        prop_assert!(delta.len() < target.len());
                        String::from_utf8(fossil_delta::apply(b, delta.as_bytes()).unwrap()).unwrap()
                    }
                    None => serde_json::from_str::<String>(as_text(&RawValue::from_string(target.clone()).unwrap()).get()).unwrap(),
                };
                prop_assert_eq!(&got, &target);
                base = Some(got);
            }
        }
    }

    #[test]
    fn a_small_change_in_a_large_payload_is_a_small_delta() {
        let book: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"price": 100 + i, "size": i * 3}))
            .collect();
        let a = serde_json::to_string(&book).unwrap();
        let b = a.replacen("\"size\":30", "\"size\":31", 1);
        let d = fossil(&a, &b).unwrap();
        assert!(d.get().len() < 40, "{}", d.get());
    }
}
