//! Receipts: a member's cursors moved. In channels of up to
//! `receipts_max_members` members every move is pushed in the channel as
//! it happens; larger groups get a summary at most once a second per node
//! that saw moves, so ten thousand members acknowledging a message cost
//! one push per subscriber, not ten thousand.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tidings_protocol::{Cursors, Receipt};

use crate::config::NamespaceOptions;
use crate::engine::EngineError;
use crate::node::Node;

/// How often large groups' summaries are sent.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// The newest offsets a summary counts.
const COUNTED: u64 = 50;

/// Large groups whose cursors moved since their last summary.
#[derive(Debug, Default)]
pub struct Summaries {
    dirty: Mutex<HashSet<String>>,
}

/// `user`'s cursors in `channel` are now `cursors`: tells the channel.
pub async fn moved(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
    user: &str,
    cursors: Cursors,
) -> Result<(), EngineError> {
    if node.engine.member_count(channel).await? > ns.receipts_max_members {
        node.summaries.dirty.lock().insert(channel.to_string());
        return Ok(());
    }
    let receipt = Receipt {
        channel: channel.to_string(),
        user: Some(user.to_string()),
        delivered: cursors.delivered,
        read: cursors.read,
        members: None,
        counts: None,
    };
    node.engine.receipt(channel, receipt).await
}

/// Each member's receipt, for a new subscriber of a channel of up to
/// `receipts_max_members` members (members who received nothing left
/// out); nothing for larger groups.
pub async fn current(
    node: &Node,
    channel: &str,
    ns: &NamespaceOptions,
) -> Result<Vec<Receipt>, EngineError> {
    if node.engine.member_count(channel).await? > ns.receipts_max_members {
        return Ok(Vec::new());
    }
    let epoch = node.engine.position(channel, &node.policy(ns)).await?.epoch;
    let cursors = node.engine.member_cursors(channel, &epoch).await?;
    Ok(cursors
        .into_iter()
        .filter(|(_, c)| *c != Cursors::default())
        .map(|(user, c)| Receipt {
            channel: channel.to_string(),
            user: Some(user),
            delivered: c.delivered,
            read: c.read,
            members: None,
            counts: None,
        })
        .collect())
}

/// Sends the summaries of large groups whose cursors moved, every
/// [`SUMMARY_EVERY`], for as long as the node runs.
pub async fn run(node: Arc<Node>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dirty: Vec<String> = node.summaries.dirty.lock().drain().collect();
        for channel in dirty {
            let sent = match summary(&node, &channel).await {
                Ok(Some(receipt)) => node.engine.receipt(&channel, receipt).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(channel, error = %e, "sending a receipts summary failed");
            }
        }
    }
}

/// The summary of `channel`'s members' cursors now.
async fn summary(node: &Node, channel: &str) -> Result<Option<Receipt>, EngineError> {
    let Ok((_, ns)) = node.resolve(channel) else {
        return Ok(None);
    };
    let position = node.engine.position(channel, &node.policy(&ns)).await?;
    let cursors = node.engine.member_cursors(channel, &position.epoch).await?;
    Ok(Some(summarize(channel, position.offset, &cursors)))
}

/// What every member has, and how many have each of the newest offsets.
fn summarize(channel: &str, top: u64, cursors: &[(String, Cursors)]) -> Receipt {
    let mut delivered: Vec<u64> = cursors.iter().map(|(_, c)| c.delivered).collect();
    let mut read: Vec<u64> = cursors.iter().map(|(_, c)| c.read).collect();
    delivered.sort_unstable();
    read.sort_unstable();
    let all_delivered = delivered.first().copied().unwrap_or(0);
    let all_read = read.first().copied().unwrap_or(0);
    // Members with a cursor at or past `offset`: those after the partition point.
    let at_least = |sorted: &[u64], offset: u64| {
        (sorted.len() - sorted.partition_point(|&c| c < offset)) as u64
    };
    let from = (all_read + 1).max(top.saturating_sub(COUNTED - 1)).max(1);
    let counts = (from..=top)
        .map(|o| [o, at_least(&delivered, o), at_least(&read, o)])
        .collect();
    Receipt {
        channel: channel.to_string(),
        user: None,
        delivered: all_delivered,
        read: all_read,
        members: Some(cursors.len() as u64),
        counts: Some(counts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_count_members_at_or_past_each_offset() {
        let c = |d, r| Cursors {
            delivered: d,
            read: r,
        };
        let members = vec![
            ("a".to_string(), c(5, 5)),
            ("b".to_string(), c(4, 2)),
            ("c".to_string(), c(3, 3)),
        ];
        let r = summarize("g", 5, &members);
        assert_eq!((r.delivered, r.read, r.members), (3, 2, Some(3)));
        assert_eq!(
            r.counts.unwrap(),
            vec![[3, 3, 2], [4, 2, 1], [5, 1, 1]],
            "offsets above what every member read"
        );
        let r = summarize("g", 200, &members);
        assert_eq!(r.counts.as_ref().unwrap().len(), COUNTED as usize);
        assert_eq!(r.counts.unwrap()[0][0], 151);
    }
}
