//! The Nexus-shaped datastore (skeleton; being built).
