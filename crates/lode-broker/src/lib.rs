//! lode-broker
