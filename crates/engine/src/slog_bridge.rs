//! steno logs through `slog`; ratchet logs through `tracing`. This drain forwards every steno record to a
//! `tracing` event with target `steno`, its key-value pairs flattened into the message.

use std::fmt::Write;

/// A `slog` drain that emits `tracing` events.
pub struct TracingDrain;

struct Flatten(String);

impl slog::Serializer for Flatten {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut kv = Flatten(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "steno", "{message}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "steno", "{message}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "steno", "{message}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "steno", "{message}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "steno", "{message}{}", kv.0),
        }
        Ok(())
    }
}
