//! The host's logger: `slog`, one JSON object a line, to a file or stderr. Any `slog` drain works (Nexus's
//! own, `slog-term`, …); this one is written out so that the example needs no logging crate beyond `slog`.
//! Every record of ratchet (commits, compensations, adoptions, fenced writes) and of steno lands here, with
//! the keys it was logged with (`component`, `event`, `saga_id`, `node`).

use serde_json::{Map, Value};
use slog::{Drain, KV, Level, Logger, OwnedKVList, Record};
use std::io::Write;
use std::sync::Mutex;

/// A logger writing JSON lines to `path` (appended) or, without one, to stderr; `Info` and above.
pub fn json_lines_logger(path: Option<&str>) -> anyhow::Result<Logger> {
    let out: Box<dyn Write + Send> = match path {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let drain = JsonLines(Mutex::new(out))
        .filter_level(Level::Info)
        .ignore_res();
    Ok(Logger::root(
        drain,
        slog::o!("service" => "embedding-example"),
    ))
}

struct JsonLines(Mutex<Box<dyn Write + Send>>);

impl Drain for JsonLines {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> std::io::Result<()> {
        let mut fields = Fields(Map::new());
        fields
            .0
            .insert("time".into(), chrono::Utc::now().to_rfc3339().into());
        fields
            .0
            .insert("level".into(), record.level().as_str().into());
        fields
            .0
            .insert("msg".into(), record.msg().to_string().into());
        // The record's keys, then its logger's, innermost first: the first value of a key wins.
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let line = Value::Object(fields.0).to_string();
        let mut out = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        writeln!(out, "{line}")?;
        out.flush()
    }
}

/// Collects a record's key-value pairs, each as a string.
struct Fields(Map<String, Value>);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0
            .entry(key.to_string())
            .or_insert_with(|| value.to_string().into());
        Ok(())
    }
}
