//! Tidings server.
