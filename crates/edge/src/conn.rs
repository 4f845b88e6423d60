//! Connections, from accept to close, for the client and the admin listeners: the one serve
//! loop shared with the control plane's API lives in [`firebreak_protocol::serve`] (bounds,
//! deadlines, PROXY header, graceful stop). This module names it for the edge.

pub use firebreak_protocol::serve::*;
