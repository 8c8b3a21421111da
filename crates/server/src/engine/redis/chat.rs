//! The chat layer's state in Redis: a channel's members (with their
//! cursors) in a hash beside its other keys, as `since:delivered:read:epoch`;
//! each user's conversations and device keys under the user's own hash
//! tag. Every step touches one key, so it works on a cluster and on
//! sharded servers alike.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Script;
use tidings_protocol::Cursors;
use tidings_protocol::chat::DeviceKey;

use super::{RedisEngine, redis_error};
use crate::engine::{Chat, EngineError, Membership};

/// KEYS members hash; ARGV user, delivered, read, epoch. Raises the
/// member's cursors (never lowers them within an epoch; those of another
/// epoch start from 0; read implies delivered). Returns {delivered, read}
/// before and after, or nil when the user is not a member.
static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return nil end
local s, d0, r0, e = string.match(v, '^(%d+):(%d+):(%d+):?(.*)$')
d0, r0 = tonumber(d0), tonumber(r0)
if e ~= ARGV[4] then d0, r0 = 0, 0 end
local r = math.max(r0, tonumber(ARGV[3]))
local d = math.max(d0, tonumber(ARGV[2]), r)
redis.call('HSET', KEYS[1], ARGV[1], s .. ':' .. string.format('%d', d) .. ':' .. string.format('%d', r) .. ':' .. ARGV[4])
return {d0, r0, d, r}
"#,
    )
});

/// KEYS device-keys hash; ARGV device, key, max devices. Stores the key
/// unless the device is new and the user has `max`; returns 1 or 0.
static PUT_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// A member's `since:delivered:read:epoch` (a new member has no epoch yet).
fn parse_member(value: &str) -> Option<(u64, Cursors, &str)> {
    let mut parts = value.splitn(4, ':');
    let mut number = || parts.next()?.parse::<u64>().ok();
    let (since, delivered, read) = (number()?, number()?, number()?);
    let epoch = parts.next().unwrap_or_default();
    Some((since, Cursors { delivered, read }, epoch))
}

#[async_trait]
impl Chat for RedisEngine {
    async fn add_members(
        &self,
        channel: &str,
        users: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, EngineError> {
        let mut added = Vec::new();
        let mut conn = self.conn(channel)?;
        for user in users {
            let new: bool = redis::cmd("HSETNX")
                .arg(self.keys.members(channel))
                .arg(user)
                .arg(format!("{at_ms}:0:0"))
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            // The index is written again for a member already there: a
            // crash between the two writes mends itself on the next add.
            redis::cmd("SADD")
                .arg(self.keys.conversations(user))
                .arg(channel)
                .query_async::<u64>(&mut self.main_conn()?)
                .await
                .map_err(redis_error)?;
            if new {
                added.push(user.clone());
            }
        }
        Ok(added)
    }

    async fn remove_members(
        &self,
        channel: &str,
        users: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let mut removed = Vec::new();
        let mut conn = self.conn(channel)?;
        for user in users {
            let gone: u64 = redis::cmd("HDEL")
                .arg(self.keys.members(channel))
                .arg(user)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            redis::cmd("SREM")
                .arg(self.keys.conversations(user))
                .arg(channel)
                .query_async::<u64>(&mut self.main_conn()?)
                .await
                .map_err(redis_error)?;
            if gone > 0 {
                removed.push(user.clone());
            }
        }
        Ok(removed)
    }

    async fn members(
        &self,
        channel: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        let mut users: Vec<String> = redis::cmd("HKEYS")
            .arg(self.keys.members(channel))
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        users.sort_unstable();
        Ok(users
            .into_iter()
            .filter(|u| cursor.is_none_or(|c| u.as_str() > c))
            .take(limit)
            .collect())
    }

    async fn membership(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<Membership>, EngineError> {
        let value: Option<String> = redis::cmd("HGET")
            .arg(self.keys.members(channel))
            .arg(user)
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(value
            .as_deref()
            .and_then(parse_member)
            .map(|(since_ms, cursors, epoch)| Membership {
                channel: channel.to_string(),
                since_ms,
                cursors,
                epoch: epoch.to_string(),
            }))
    }

    async fn member_cursors(
        &self,
        channel: &str,
        epoch: &str,
    ) -> Result<Vec<(String, Cursors)>, EngineError> {
        let all: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.members(channel))
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(all
            .into_iter()
            .filter_map(|(u, v)| {
                let (_, cursors, e) = parse_member(&v)?;
                Some((
                    u,
                    if e == epoch {
                        cursors
                    } else {
                        Cursors::default()
                    },
                ))
            })
            .collect())
    }

    async fn member_count(&self, channel: &str) -> Result<usize, EngineError> {
        redis::cmd("HLEN")
            .arg(self.keys.members(channel))
            .query_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)
    }

    async fn advance(
        &self,
        channel: &str,
        user: &str,
        epoch: &str,
        to: Cursors,
    ) -> Result<Option<(Cursors, Cursors)>, EngineError> {
        let stored: Option<(u64, u64, u64, u64)> = ADVANCE
            .key(self.keys.members(channel))
            .arg(user)
            .arg(to.delivered)
            .arg(to.read)
            .arg(epoch)
            .invoke_async(&mut self.conn(channel)?)
            .await
            .map_err(redis_error)?;
        Ok(stored.map(|(d0, r0, d, r)| {
            (
                Cursors {
                    delivered: d0,
                    read: r0,
                },
                Cursors {
                    delivered: d,
                    read: r,
                },
            )
        }))
    }

    async fn conversations(&self, user: &str) -> Result<Vec<Membership>, EngineError> {
        let channels: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.conversations(user))
            .query_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)?;
        let mut out = Vec::with_capacity(channels.len());
        for channel in channels {
            if let Some(m) = self.membership(&channel, user).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    async fn put_key(
        &self,
        user: &str,
        device: &str,
        key: &str,
        max: usize,
    ) -> Result<bool, EngineError> {
        let stored: u64 = PUT_KEY
            .key(self.keys.device_keys(user))
            .arg(device)
            .arg(key)
            .arg(max)
            .invoke_async(&mut self.main_conn()?)
            .await
            .map_err(redis_error)?;
        Ok(stored == 1)
    }

    async fn keys(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, Vec<DeviceKey>>, EngineError> {
        let mut out = BTreeMap::new();
        for user in users {
            let devices: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(self.keys.device_keys(user))
                .query_async(&mut self.main_conn()?)
                .await
                .map_err(redis_error)?;
            if !devices.is_empty() {
                let keys = devices
                    .into_iter()
                    .map(|(device, key)| DeviceKey { device, key })
                    .collect();
                out.insert(user.clone(), keys);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_values_parse() {
        let c = Cursors {
            delivered: 7,
            read: 3,
        };
        assert_eq!(parse_member("5:7:3:e1"), Some((5, c, "e1")));
        assert_eq!(parse_member("5:7:3"), Some((5, c, "")));
        assert_eq!(parse_member("5:x:3"), None);
        assert_eq!(parse_member("5:7"), None);
    }
}
