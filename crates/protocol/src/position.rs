//! The position vector: where an SSE or long-poll client stands in every
//! channel it reads, as one opaque, compact string (base64url).
//!
//! Layout (before base64url, no padding): a version byte (1), then for each
//! channel with history: FNV-1a-32 of the channel name (4 bytes, big
//! endian), FNV-1a-32 of its epoch (4 bytes), and the offset (LEB128). No
//! server state is needed to read it, on any node. A hash of the epoch is
//! enough: a changed epoch is what must be noticed, and its name is public.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

const VERSION: u8 = 1;
/// Most entries a vector may hold.
pub const MAX_ENTRIES: usize = 1024;

/// One channel's position, as read back from a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// [`hash`] of the channel name.
    pub channel: u32,
    /// [`hash`] of the epoch.
    pub epoch: u32,
    /// The last offset delivered.
    pub offset: u64,
}

/// A vector that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PositionError {
    /// Not base64url.
    #[error("the position is not base64url")]
    Encoding,
    /// Unknown version byte.
    #[error("unknown position format")]
    Version,
    /// Cut short or with a bad number.
    #[error("the position is truncated or malformed")]
    Malformed,
    /// More entries than allowed.
    #[error("the position has too many channels")]
    TooLong,
}

/// FNV-1a, 32 bits: stable across nodes and versions.
pub fn hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Encodes `(channel, epoch, offset)` triples.
pub fn encode<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> String {
    let mut out = vec![VERSION];
    for (channel, epoch, mut offset) in entries {
        out.extend_from_slice(&hash(channel).to_be_bytes());
        out.extend_from_slice(&hash(epoch).to_be_bytes());
        loop {
            let byte = (offset & 0x7f) as u8;
            offset >>= 7;
            if offset == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    URL_SAFE_NO_PAD.encode(out)
}

/// Decodes a vector. Never panics.
pub fn decode(s: &str) -> Result<Vec<Entry>, PositionError> {
    if s.len() > MAX_ENTRIES * 24 {
        return Err(PositionError::TooLong);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(s.trim())
        .map_err(|_| PositionError::Encoding)?;
    let (&version, mut rest) = bytes.split_first().ok_or(PositionError::Malformed)?;
    if version != VERSION {
        return Err(PositionError::Version);
    }
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if entries.len() == MAX_ENTRIES {
            return Err(PositionError::TooLong);
        }
        let (head, tail) = rest.split_at_checked(8).ok_or(PositionError::Malformed)?;
        let channel = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let epoch = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let mut offset = 0u64;
        let mut used = 0;
        loop {
            let byte = *tail.get(used).ok_or(PositionError::Malformed)?;
            if used == 9 && byte > 1 {
                return Err(PositionError::Malformed);
            }
            offset |= u64::from(byte & 0x7f) << (7 * used);
            used += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if used == 10 {
                return Err(PositionError::Malformed);
            }
        }
        entries.push(Entry {
            channel,
            epoch,
            offset,
        });
        rest = &tail[used..];
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        let one = encode([("news", "a1b2c3d4", 1234)]);
        assert!(one.len() <= 20, "{one}");
        let names: Vec<String> = (0..50).map(|i| format!("room-{i}")).collect();
        let fifty = encode(names.iter().map(|n| (n.as_str(), "a1b2c3d4", 100_000)));
        assert!(fifty.len() < 800, "{}", fifty.len());
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(decode("!!!"), Err(PositionError::Encoding));
        assert_eq!(decode(""), Err(PositionError::Malformed));
        assert_eq!(decode("Ag"), Err(PositionError::Version));
        assert_eq!(decode("AQID"), Err(PositionError::Malformed));
        // Eleven continuation bytes: not a u64.
        let mut raw = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0];
        raw.extend([0xff; 11]);
        assert_eq!(
            decode(&URL_SAFE_NO_PAD.encode(raw)),
            Err(PositionError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn round_trips(entries in proptest::collection::vec(("[a-z:#]{1,20}", "[a-z0-9]{8}", any::<u64>()), 0..20)) {
            let v = encode(entries.iter().map(|(c, e, o)| (c.as_str(), e.as_str(), *o)));
            let back = decode(&v).unwrap();
            prop_assert_eq!(back.len(), entries.len());
            for (b, (c, e, o)) in back.iter().zip(&entries) {
                prop_assert_eq!(*b, Entry { channel: hash(c), epoch: hash(e), offset: *o });
            }
        }

        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&URL_SAFE_NO_PAD.encode(bytes));
        }
    }
}
