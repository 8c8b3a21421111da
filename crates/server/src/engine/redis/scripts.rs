//! The Lua scripts: each runs atomically in Redis, so one round trip does a
//! whole per-channel step (no other publish of the channel interleaves).
//!
//! Every key of one channel carries the hash tag `{channel}`, so a script
//! touches one Redis Cluster slot.

use std::sync::LazyLock;

use redis::Script;

/// Publish: KEYS stream, meta, idempotency key; ARGV payload, history_size,
/// history_ttl ms, meta ttl ms, idempotency window ms, a new epoch (used
/// when the channel has none), "1" when a key is given, the pub/sub channel,
/// "1" when it is a snapshot (kept in the meta hash as `s`, "offset:payload",
/// so it lives and dies with the epoch, beyond the stream's trimming).
/// Returns {offset, epoch, duplicate}. A channel without metadata (new, or
/// lost by Redis) starts a new epoch with an empty stream, so no offset is
/// ever reused within an epoch.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, meta, idem = KEYS[1], KEYS[2], KEYS[3]
local payload, size = ARGV[1], tonumber(ARGV[2])
if ARGV[7] == '1' then
  local seen = redis.call('GET', idem)
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 1}
  end
end
local top, epoch = 0, ''
if size > 0 then
  epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', stream)
    redis.call('HDEL', meta, 's')
    redis.call('HSET', meta, 'e', epoch, 't', 0)
  end
  top = redis.call('HINCRBY', meta, 't', 1)
  if ARGV[9] == '1' then
    redis.call('HSET', meta, 's', top .. ':' .. payload)
  end
  redis.call('PEXPIRE', meta, ARGV[4])
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', payload)
  redis.call('PEXPIRE', stream, ARGV[3])
end
redis.call('PUBLISH', ARGV[8], 'p' .. top .. ':' .. epoch .. ':' .. payload)
if ARGV[7] == '1' then
  redis.call('SET', idem, top .. ':' .. epoch, 'PX', ARGV[5])
end
return {top, epoch, 0}
"#,
    )
});

/// Read: KEYS stream, meta; ARGV a new epoch, meta ttl ms, first offset,
/// count (0: position only), "1" for newest first, an epoch to replace (""
/// for none). Returns {top, epoch, entries}. Creates the epoch of a channel
/// that has none (new, or lost by Redis: from offset 0), so that a
/// subscriber's position and the next publish share it; replaces the given
/// epoch (a node saw its offsets handed out twice: same top, empty history).
pub(super) static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if (not epoch) or epoch == ARGV[6] then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HDEL', meta, 's')
  redis.call('HSET', meta, 'e', epoch)
  redis.call('HSETNX', meta, 't', 0)
  redis.call('PEXPIRE', meta, ARGV[2])
end
local top = tonumber(redis.call('HGET', meta, 't'))
local entries = {}
local count = tonumber(ARGV[4])
if count > 0 then
  if ARGV[5] == '1' then
    entries = redis.call('XREVRANGE', stream, '+', ARGV[3] .. '-0', 'COUNT', count)
  else
    entries = redis.call('XRANGE', stream, ARGV[3] .. '-0', '+', 'COUNT', count)
  end
end
return {top, epoch, entries}
"#,
    )
});

/// Presence join or renewal: KEYS leases (zset client → expiry ms), names
/// (zset of client ids, for paging), infos (hash client → ClientInfo JSON),
/// users (hash user → entries); ARGV client, user, info JSON, expiry ms,
/// keys' ttl ms, "1" for join/leave pushes, join_leave_max, "1" per user,
/// the pub/sub channel. Returns 2 for the user's first entry, 1 for
/// another new entry, 0 for a renewal.
pub(super) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local renewed = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
local n = 0
if not renewed then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  n = redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
if renewed then return 0 end
if ARGV[6] == '1' and redis.call('ZCARD', KEYS[1]) <= tonumber(ARGV[7])
    and (ARGV[8] ~= '1' or n == 1) then
  redis.call('PUBLISH', ARGV[9], 'j' .. ARGV[3])
end
if n == 1 then return 2 end
return 1
"#,
    )
});

/// Which nodes have subscribers of a channel: KEYS the channel's
/// occupancy set; ARGV "add" or "rem", this node's id, then the ids of the
/// live nodes (the others' entries are forgotten: they died). Returns 1
/// when the channel became occupied ("add") or vacant ("rem") in the
/// cluster, else 0.
pub(super) static OCCUPANCY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not live[node] and node ~= ARGV[2] then redis.call('SREM', KEYS[1], node) end
end
if ARGV[1] == 'add' then
  local added = redis.call('SADD', KEYS[1], ARGV[2])
  if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then return 1 end
  return 0
end
local removed = redis.call('SREM', KEYS[1], ARGV[2])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"#,
    )
});

/// Presence removal: KEYS as [`JOIN`]; ARGV "client" and a client id, or
/// "expire" and now (ms: removes up to 1000 entries whose lease ended);
/// "1" for join/leave pushes, join_leave_max, "1" per user, the pub/sub
/// channel. Each removal is announced like a leave. Returns how many went
/// (for one client: 2 when it was its user's last entry).
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function leave(client)
  local info = redis.call('HGET', KEYS[3], client)
  redis.call('ZREM', KEYS[1], client)
  redis.call('ZREM', KEYS[2], client)
  redis.call('HDEL', KEYS[3], client)
  if not info then return 0 end
  local user = cjson.decode(info).user
  local n = redis.call('HINCRBY', KEYS[4], user, -1)
  if n <= 0 then redis.call('HDEL', KEYS[4], user) end
  if ARGV[3] == '1' and redis.call('ZCARD', KEYS[1]) <= tonumber(ARGV[4])
      and (ARGV[5] ~= '1' or n <= 0) then
    redis.call('PUBLISH', ARGV[6], 'l' .. info)
  end
  if n <= 0 then return 2 end
  return 1
end
if ARGV[1] == 'client' then
  return leave(ARGV[2])
end
local gone = 0
for _, client in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)) do
  gone = gone + math.min(leave(client), 1)
end
return gone
"#,
    )
});

/// A user's connections across nodes: KEYS the user's hash (node id →
/// "seq:count"), the live nodes (zset by expiry); ARGV this node's id, its
/// count of the user's connections, max (0: no check), now ms, seq. With a
/// max, the other live nodes' counts are added (dead nodes' forgotten) and
/// over max refuses (0). Otherwise this node's count is recorded (1),
/// unless a newer one (higher seq) already is.
pub(super) static USER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local count, max, seq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local counts = redis.call('HGETALL', KEYS[1])
local total, newer = count, false
for i = 1, #counts, 2 do
  local had_seq, had = string.match(counts[i + 1], '^(%d+):(%d+)$')
  if counts[i] == ARGV[1] then
    newer = had_seq ~= nil and tonumber(had_seq) > seq
  else
    local expiry = redis.call('ZSCORE', KEYS[2], counts[i])
    if had and expiry and tonumber(expiry) > tonumber(ARGV[4]) then
      total = total + tonumber(had)
    else
      redis.call('HDEL', KEYS[1], counts[i])
    end
  end
end
if max > 0 and total > max then return 0 end
if newer then return 1 end
if count > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5] .. ':' .. ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"#,
    )
});

/// A page of presence: KEYS names, infos; ARGV cursor ("" for the first
/// page), limit. Returns {ids, infos} with up to limit + 1 entries.
pub(super) static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], min, '+', 'LIMIT', 0, tonumber(ARGV[2]) + 1)
if #ids == 0 then return {{}, {}} end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
"#,
    )
});
