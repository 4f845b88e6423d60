//! Active health checks (being written).
