//! Simulated sled agent and pantry (skeleton; being built).
