//! The `tidings.v1.msgpack` codec: the same messages as the JSON codec,
//! each a MessagePack value (maps with string keys, JSON's types), several
//! back to back in one binary frame. Both directions are transcoded from
//! and to the JSON messages, so one model serves both subprotocols and
//! every command keeps one decoder. Never panics.

use bytes::Bytes;
use thiserror::Error;

use crate::command::{Command, DecodeError};

/// How deeply a MessagePack value may nest: what the JSON decoder allows.
const MAX_DEPTH: usize = 128;

/// A message that could not be transcoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TranscodeError(String);

/// Transcodes one JSON message into MessagePack.
pub fn from_json(json: &[u8]) -> Result<Bytes, TranscodeError> {
    let mut out = Vec::with_capacity(json.len());
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut ser = rmp_serde::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser).map_err(|e| TranscodeError(e.to_string()))?;
    de.end().map_err(|e| TranscodeError(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Transcodes one MessagePack value at the start of `input` into JSON;
/// returns it and how many bytes it took.
pub fn to_json(input: &[u8]) -> Result<(Vec<u8>, usize), TranscodeError> {
    let mut cursor = std::io::Cursor::new(input);
    let mut out = Vec::with_capacity(input.len().min(4096));
    let mut de = rmp_serde::Deserializer::new(&mut cursor);
    de.set_max_depth(MAX_DEPTH);
    let mut ser = serde_json::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser).map_err(|e| TranscodeError(e.to_string()))?;
    let used = usize::try_from(cursor.position()).unwrap_or(input.len());
    Ok((out, used.max(1)))
}

/// Splits a binary frame into its MessagePack commands and decodes each,
/// one at a time as they are taken. A value that is not a command is
/// answered like malformed JSON (101); bytes that are not MessagePack end
/// the frame with one such error.
pub fn decode_commands(frame: &[u8]) -> impl Iterator<Item = Result<Command, DecodeError>> + '_ {
    let mut rest = Some(frame);
    std::iter::from_fn(move || {
        let input = rest.take().filter(|r| !r.is_empty())?;
        Some(match to_json(input) {
            Ok((json, used)) => {
                rest = input.get(used..);
                Command::decode(&json)
            }
            Err(e) => Err(DecodeError {
                id: None,
                message: format!("malformed MessagePack: {e}"),
            }),
        })
    })
}

/// Splits a binary frame of server messages into JSON messages.
pub fn to_json_messages(frame: &[u8]) -> Result<Vec<Vec<u8>>, TranscodeError> {
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        let (json, used) = to_json(rest)?;
        out.push(json);
        rest = rest.get(used..).unwrap_or_default();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_command_round_trips() {
        let json =
            br#"{"id":3,"op":"publish","channel":"a","data":{"x":[1,-2,3.5,"\u00e9",null,true]}}"#;
        let mp = from_json(json).unwrap();
        assert!(mp.len() < json.len());
        let cmds: Vec<_> = decode_commands(&[mp.as_ref(), mp.as_ref()].concat()).collect();
        assert_eq!(cmds.len(), 2);
        match &cmds[0] {
            Ok(Command {
                id: 3,
                kind: crate::CommandKind::Publish { data, .. },
            }) => assert_eq!(data.get(), r#"{"x":[1,-2,3.5,"é",null,true]}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        // A map with a non-string key cannot be JSON.
        let mut cmds = decode_commands(&[0x81, 0x01, 0x02]);
        assert!(cmds.next().unwrap().is_err());
        // Truncated.
        assert!(decode_commands(&[0x82, 0xa2, b'i']).all(|c| c.is_err()));
        // Too deep.
        let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 200).chain([0xc0]).collect();
        assert!(decode_commands(&deep).next().unwrap().is_err());
        // A frame of a million nils is decoded one by one, not all at once.
        let nils = vec![0xc0u8; 1 << 20];
        assert!(decode_commands(&nils).take(3).all(|c| c.is_err()));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_frame(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_commands(&frame).count();
            let _ = to_json_messages(&frame);
        }
    }
}
