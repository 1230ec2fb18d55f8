//! lode-storage
