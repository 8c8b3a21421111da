//! Tidings client.
