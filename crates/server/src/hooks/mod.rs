//! The backend in the loop: [`proxy`] hooks that decide, [`webhook`]s that
//! tell (signed by [`signature`], queued on disk by [`queue`]).

pub mod proxy;
pub mod queue;
pub mod signature;
pub mod webhook;

pub use proxy::{Allow, HookError, HookRequest, Peer, Proxy};
pub use webhook::Webhooks;
