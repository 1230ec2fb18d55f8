//! lode-core
