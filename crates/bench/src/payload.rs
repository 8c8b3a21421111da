//! The publications' data: a JSON string `"~c<channel>~s<seq>~t<µs>~xx…"`.
//! A string passes unchanged through every peer's protocol (Pusher carries
//! data as a string), and the markers are found by a byte scan wherever they
//! sit in a frame: a push, a batch of pushes, a recovery reply, an SSE event.

use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;

/// One publication seen by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Channel index.
    pub channel: u32,
    /// Sequence number within the channel, from 1.
    pub seq: u64,
    /// When it was published, µs since the Unix epoch.
    pub sent_us: u64,
}

/// Microseconds since the Unix epoch (publisher and clients share the clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The data string (without JSON quotes) of `size` bytes, or a little more
/// when the markers need it.
pub fn make(channel: u32, seq: u64, sent_us: u64, size: usize) -> String {
    let mut s = format!("~c{channel}~s{seq}~t{sent_us}~");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Finds every publication in `bytes`.
pub struct Scanner {
    finder: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            finder: Finder::new(b"~c"),
        }
    }
}

impl Scanner {
    /// Calls `f` for each well-formed marker group in `bytes`.
    pub fn scan(&self, bytes: &[u8], mut f: impl FnMut(Seen)) {
        for at in self.finder.find_iter(bytes) {
            if let Some(seen) = parse(&bytes[at..]) {
                f(seen);
            }
        }
    }
}

fn parse(b: &[u8]) -> Option<Seen> {
    let (channel, rest) = number(b.strip_prefix(b"~c")?)?;
    let (seq, rest) = number(rest.strip_prefix(b"~s")?)?;
    let (sent_us, rest) = number(rest.strip_prefix(b"~t")?)?;
    rest.starts_with(b"~").then_some(Seen {
        channel: u32::try_from(channel).ok()?,
        seq,
        sent_us,
    })
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = b[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, &b[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_any_wrapping() {
        let data = make(7, 42, 1_700_000_000_000_000, 100);
        assert_eq!(data.len() + 2, 100);
        let frames = [
            format!("{{\"push\":\"pub\",\"channel\":\"b7\",\"offset\":42,\"data\":\"{data}\"}}"),
            format!("{{\"event\":\"m\",\"channel\":\"b7\",\"data\":\"{data}\"}}"),
            format!("42[\"m\",\"{data}\"]"),
            format!("data: {{\"data\":\"{data}\"}}\n\ndata: {{\"data\":\"{data}\"}}"),
        ];
        let sc = Scanner::default();
        for (i, f) in frames.iter().enumerate() {
            let mut seen = Vec::new();
            sc.scan(f.as_bytes(), |s| seen.push(s));
            assert_eq!(seen.len(), if i == 3 { 2 } else { 1 }, "{f}");
            assert_eq!(
                seen[0],
                Seen {
                    channel: 7,
                    seq: 42,
                    sent_us: 1_700_000_000_000_000
                }
            );
        }
    }

    #[test]
    fn ignores_broken_markers() {
        let sc = Scanner::default();
        let mut n = 0;
        sc.scan(
            b"~c~s1~t2~ ~c1~s~t2~ ~c1~s2~t3 ~c99999999999~s1~t1~",
            |_| n += 1,
        );
        assert_eq!(n, 0);
    }
}
