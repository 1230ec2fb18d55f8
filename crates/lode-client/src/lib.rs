//! lode-client
