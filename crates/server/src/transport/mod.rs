//! Transports: turn bytes from the network into commands, and outbox
//! batches into bytes on the network.

mod heartbeat;
pub mod http;
pub mod poll;
pub mod pusher;
pub mod socket;
pub mod sse;
pub mod ws;

/// `reason` cut to what a WebSocket close frame carries (123 bytes, on a
/// character boundary): a longer one would not fit the frame.
pub(crate) fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_reasons_fit_the_frame() {
        assert_eq!(super::close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = super::close_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(cut));
    }
}
