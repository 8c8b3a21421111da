//! Per-channel position tracking: deduplication, gap detection and recovery
//! decisions. Pure: no I/O, so every rule is unit-tested.

use tidings_protocol::reply::SubscribeOk;
use tidings_protocol::{Publication, SinceArg};

use crate::subscription::SubEvent;

/// A publication as its event: a snapshot or a publication.
fn event(p: Publication) -> SubEvent {
    if p.snapshot {
        SubEvent::Snapshot(p)
    } else {
        SubEvent::Publication(p)
    }
}

/// The last position delivered to the app in one channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    pos: Option<SinceArg>,
}

impl Tracker {
    /// A tracker that starts at `since` (the app's own position), if given.
    pub(crate) fn new(since: Option<SinceArg>) -> Self {
        Self { pos: since }
    }

    /// The position to resume from (`since` of the next subscribe), if known.
    pub(crate) fn since(&self) -> Option<SinceArg> {
        self.pos.clone()
    }

    /// Applies a subscribe reply. `asked` is the `since` the subscribe carried.
    ///
    /// Emits `Subscribed`, then either the recovered publications (deduplicated,
    /// gaps reported) or `NotRecovered` when the server could not recover.
    pub(crate) fn on_subscribed(
        &mut self,
        asked: Option<&SinceArg>,
        ok: SubscribeOk,
    ) -> Vec<SubEvent> {
        let mut events = vec![SubEvent::Subscribed {
            recovered: ok.recovered,
            offset: ok.offset,
            epoch: ok.epoch.clone(),
        }];
        let publications = ok.publications.unwrap_or_default();
        let (Some(top), Some(epoch)) = (ok.offset, ok.epoch) else {
            // Ephemeral channel: no positions, deliver whatever came.
            self.pos = None;
            events.extend(publications.into_iter().map(SubEvent::Publication));
            return events;
        };
        let restart = publications
            .first()
            .is_some_and(|p| p.snapshot || asked.is_none());
        if restart && ok.recovered != Some(true) {
            // The position is lost (or none was given) but the channel has
            // a snapshot (or, asked with `snapshot`, holds everything from
            // its start): it and everything after it follow, not a loss.
            let first = publications.first().and_then(|p| p.offset).unwrap_or(1);
            self.pos = Some(SinceArg {
                offset: first - 1,
                epoch: epoch.clone(),
            });
            for p in publications {
                events.extend(self.on_publication(Some(&epoch), p, false));
            }
            return events;
        }
        match asked {
            None => {
                // Fresh subscribe: the app starts from the top now.
                self.pos = Some(SinceArg {
                    offset: top,
                    epoch: epoch.clone(),
                });
                for p in publications {
                    events.extend(self.on_publication(Some(&epoch), p, false));
                }
            }
            Some(since) => {
                let recovered =
                    ok.recovered == Some(true) && since.epoch == epoch && since.offset <= top;
                if recovered {
                    self.pos = Some(since.clone());
                    for p in publications {
                        events.extend(self.on_publication(Some(&epoch), p, false));
                    }
                    let at = self.pos.as_ref().map_or(0, |p| p.offset);
                    if at < top {
                        // The server said recovered but did not send everything up to the top.
                        events.push(SubEvent::NotRecovered {
                            offset: top,
                            epoch: epoch.clone(),
                        });
                        self.pos = Some(SinceArg { offset: top, epoch });
                    }
                } else {
                    events.push(SubEvent::NotRecovered {
                        offset: top,
                        epoch: epoch.clone(),
                    });
                    self.pos = Some(SinceArg { offset: top, epoch });
                }
            }
        }
        events
    }

    /// Applies one publication (a `pub` push, or one from a subscribe reply).
    /// `epoch` is the push's epoch (or the reply's); `None` means "unchanged".
    ///
    /// Returns nothing for a duplicate (offset already delivered), the
    /// publication alone when it is the next one, or `NotRecovered` followed by
    /// the publication when some were lost in between or the epoch changed.
    /// With `skips` (the push said `latest`), an offset jump is no loss.
    pub(crate) fn on_publication(
        &mut self,
        epoch: Option<&str>,
        p: Publication,
        skips: bool,
    ) -> Vec<SubEvent> {
        let Some(offset) = p.offset else {
            return vec![event(p)];
        };
        if p.snapshot {
            // A snapshot stands alone: what came before it no longer matters.
            let epoch = epoch
                .map(String::from)
                .or_else(|| self.pos.as_ref().map(|p| p.epoch.clone()));
            let seen = self
                .pos
                .as_ref()
                .is_some_and(|pos| Some(&pos.epoch) == epoch.as_ref() && offset <= pos.offset);
            if seen {
                return Vec::new();
            }
            if let Some(epoch) = epoch {
                self.pos = Some(SinceArg { offset, epoch });
            }
            return vec![SubEvent::Snapshot(p)];
        }
        let Some(pos) = self.pos.as_mut() else {
            // Nothing known yet: start from here when the epoch is known.
            if let Some(epoch) = epoch {
                self.pos = Some(SinceArg {
                    offset,
                    epoch: epoch.to_string(),
                });
            }
            return vec![SubEvent::Publication(p)];
        };
        let same_epoch = epoch.is_none_or(|e| e == pos.epoch);
        if same_epoch {
            if offset <= pos.offset {
                return Vec::new();
            }
            let gap = offset > pos.offset.saturating_add(1) && !skips;
            pos.offset = offset;
            if !gap {
                return vec![SubEvent::Publication(p)];
            }
            let epoch = pos.epoch.clone();
            vec![
                SubEvent::NotRecovered {
                    offset: offset - 1,
                    epoch,
                },
                SubEvent::Publication(p),
            ]
        } else {
            let epoch = epoch.unwrap_or_default().to_string();
            *pos = SinceArg {
                offset,
                epoch: epoch.clone(),
            };
            vec![
                SubEvent::NotRecovered {
                    offset: offset.saturating_sub(1),
                    epoch,
                },
                SubEvent::Publication(p),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publ(offset: u64) -> Publication {
        Publication {
            offset: Some(offset),
            data: RawValue::from_string(offset.to_string()).unwrap(),
            info: None,
            tags: None,
            key: None,
            priority: None,
            time: 0,
            snapshot: false,
        }
    }

    fn since(offset: u64, epoch: &str) -> SinceArg {
        SinceArg {
            offset,
            epoch: epoch.into(),
        }
    }

    fn ok(offset: u64, epoch: &str, recovered: Option<bool>, pubs: &[u64]) -> SubscribeOk {
        SubscribeOk {
            offset: Some(offset),
            epoch: Some(epoch.into()),
            recovered,
            publications: (!pubs.is_empty()).then(|| pubs.iter().map(|o| publ(*o)).collect()),
            ..Default::default()
        }
    }

    /// A compact rendering: `S` subscribed, `P5` publication 5, `N7@e` not recovered.
    fn show(events: &[SubEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SubEvent::Subscribed { recovered, .. } => match recovered {
                    Some(true) => "S+".to_string(),
                    Some(false) => "S-".to_string(),
                    None => "S".to_string(),
                },
                SubEvent::Publication(p) => format!("P{}", p.offset.map_or(-1, |o| o as i64)),
                SubEvent::NotRecovered { offset, epoch } => format!("N{offset}@{epoch}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn fresh_subscribe_drops_old_and_duplicate_publications() {
        let mut t = Tracker::new(None);
        assert_eq!(show(&t.on_subscribed(None, ok(5, "e", None, &[]))), ["S"]);
        assert_eq!(t.since(), Some(since(5, "e")));
        assert!(t.on_publication(Some("e"), publ(5), false).is_empty());
        assert!(t.on_publication(Some("e"), publ(3), false).is_empty());
        assert_eq!(show(&t.on_publication(Some("e"), publ(6), false)), ["P6"]);
        assert!(t.on_publication(Some("e"), publ(6), false).is_empty());
        assert_eq!(show(&t.on_publication(None, publ(7), false)), ["P7"]);
        assert_eq!(t.since(), Some(since(7, "e")));
    }

    #[test]
    fn gap_is_reported_as_not_recovered_then_delivered() {
        let mut t = Tracker::new(None);
        t.on_subscribed(None, ok(5, "e", None, &[]));
        assert_eq!(
            show(&t.on_publication(Some("e"), publ(9), false)),
            ["N8@e", "P9"]
        );
        assert_eq!(t.since(), Some(since(9, "e")));
        assert_eq!(show(&t.on_publication(Some("e"), publ(10), false)), ["P10"]);
    }

    #[test]
    fn epoch_change_is_reported() {
        let mut t = Tracker::new(None);
        t.on_subscribed(None, ok(5, "e", None, &[]));
        assert_eq!(
            show(&t.on_publication(Some("f"), publ(1), false)),
            ["N0@f", "P1"]
        );
        assert_eq!(t.since(), Some(since(1, "f")));
        assert!(t.on_publication(Some("f"), publ(1), false).is_empty());
    }

    #[test]
    fn recovery_delivers_missed_publications_without_duplicates() {
        let mut t = Tracker::new(None);
        t.on_subscribed(None, ok(5, "e", None, &[]));
        t.on_publication(Some("e"), publ(6), false);
        let asked = t.since().unwrap();
        assert_eq!(asked, since(6, "e"));
        // The server resends 6 (overlap) and the missed 7, 8.
        let ev = t.on_subscribed(Some(&asked), ok(8, "e", Some(true), &[6, 7, 8]));
        assert_eq!(show(&ev), ["S+", "P7", "P8"]);
        // A live push that raced the reply is dropped; the next one flows.
        assert!(t.on_publication(Some("e"), publ(8), false).is_empty());
        assert_eq!(show(&t.on_publication(Some("e"), publ(9), false)), ["P9"]);
    }

    #[test]
    fn recovered_but_short_of_the_top_is_a_loss() {
        let mut t = Tracker::new(Some(since(2, "e")));
        let ev = t.on_subscribed(Some(&since(2, "e")), ok(10, "e", Some(true), &[3, 4]));
        assert_eq!(show(&ev), ["S+", "P3", "P4", "N10@e"]);
        assert_eq!(t.since(), Some(since(10, "e")));
    }

    #[test]
    fn recovered_with_a_hole_in_the_publications() {
        let mut t = Tracker::new(Some(since(2, "e")));
        let ev = t.on_subscribed(Some(&since(2, "e")), ok(5, "e", Some(true), &[3, 5]));
        assert_eq!(show(&ev), ["S+", "P3", "N4@e", "P5"]);
    }

    #[test]
    fn not_recovered_jumps_to_the_top() {
        let mut t = Tracker::new(Some(since(2, "e")));
        let ev = t.on_subscribed(Some(&since(2, "e")), ok(50, "e", Some(false), &[]));
        assert_eq!(show(&ev), ["S-", "N50@e"]);
        assert!(t.on_publication(Some("e"), publ(50), false).is_empty());
        assert_eq!(show(&t.on_publication(Some("e"), publ(51), false)), ["P51"]);
    }

    #[test]
    fn recovered_true_is_not_trusted_across_epochs_or_backwards() {
        let mut t = Tracker::new(None);
        let ev = t.on_subscribed(Some(&since(2, "old")), ok(3, "new", Some(true), &[3]));
        assert_eq!(show(&ev), ["S+", "N3@new"]);
        assert_eq!(t.since(), Some(since(3, "new")));

        let mut t = Tracker::new(None);
        let ev = t.on_subscribed(Some(&since(9, "e")), ok(3, "e", Some(true), &[]));
        assert_eq!(show(&ev), ["S+", "N3@e"]);
        assert_eq!(t.since(), Some(since(3, "e")));

        // `recovered` missing although `since` was sent: not recovered.
        let mut t = Tracker::new(None);
        let ev = t.on_subscribed(Some(&since(2, "e")), ok(3, "e", None, &[3]));
        assert_eq!(show(&ev), ["S", "N3@e"]);
    }

    #[test]
    fn nothing_missed() {
        let mut t = Tracker::new(None);
        let ev = t.on_subscribed(Some(&since(4, "e")), ok(4, "e", Some(true), &[]));
        assert_eq!(show(&ev), ["S+"]);
        assert_eq!(show(&t.on_publication(Some("e"), publ(5), false)), ["P5"]);
    }

    #[test]
    fn ephemeral_channels_deliver_everything() {
        let mut t = Tracker::new(None);
        let ev = t.on_subscribed(None, SubscribeOk::default());
        assert_eq!(show(&ev), ["S"]);
        assert_eq!(t.since(), None);
        let mut p = publ(0);
        p.offset = None;
        assert_eq!(show(&t.on_publication(None, p.clone(), false)), ["P-1"]);
        assert_eq!(show(&t.on_publication(None, p, false)), ["P-1"]);
        assert_eq!(t.since(), None);
    }

    #[test]
    fn first_publication_without_a_position_sets_it() {
        let mut t = Tracker::new(None);
        assert_eq!(show(&t.on_publication(Some("e"), publ(3), false)), ["P3"]);
        assert_eq!(t.since(), Some(since(3, "e")));
        assert!(t.on_publication(Some("e"), publ(2), false).is_empty());
    }

    #[test]
    fn latest_pushes_jump_without_a_loss() {
        let mut t = Tracker::new(Some(since(5, "e")));
        assert_eq!(show(&t.on_publication(Some("e"), publ(9), true)), ["P9"]);
        assert!(t.on_publication(Some("e"), publ(7), true).is_empty());
        assert_eq!(
            show(&t.on_publication(Some("e"), publ(12), false)),
            ["N11@e", "P12"]
        );
    }
}
