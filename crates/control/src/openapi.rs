//! The OpenAPI 3 document of the API, served at `/v1/openapi.json`. A test checks that every
//! route of the router is described.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");
