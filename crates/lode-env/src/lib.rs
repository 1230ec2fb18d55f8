//! lode-env
