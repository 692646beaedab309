//! Pieces every table module uses: state labels stored as TEXT, the "updated row or current row" result shape,
//! and argument checks.

use crate::error::{DatastoreError, DatastoreResult, corrupt};
use diesel::sql_types::Bool;
// The derive's `embed` expansion names the trait unqualified.
use diesel::QueryableByName;
use serde::de::DeserializeOwned;

/// A label that is not one of an enum's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} label {label:?}")]
pub struct UnknownLabel {
    pub what: &'static str,
    pub label: String,
}

/// Defines a state enum stored as a TEXT label (the schema has CHECK constraints, not enum types: CockroachDB
/// and PostgreSQL both run them and they need no migration to extend). Derives serde with the same labels, and
/// diesel's `ToSql`/`FromSql` for `Text`, so values bind and load directly.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $label)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label stored in the database.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::common::UnknownLabel;

            fn from_str(label: &str) -> Result<Self, Self::Err> {
                match label {
                    $($label => Ok($name::$variant),)+
                    _ => Err($crate::common::UnknownLabel { what: $what, label: label.to_owned() }),
                }
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                std::io::Write::write_all(out, self.label().as_bytes())?;
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let label = std::str::from_utf8(value.as_bytes())?;
                Ok(label.parse::<$name>()?)
            }
        }
    };
}
pub(crate) use label_enum;

/// The result of the "update it, or tell me what it is now" statements, whose shape is
///
/// ```text
/// WITH cur AS (SELECT <cols> FROM t WHERE id = $1),
///      upd AS (UPDATE t SET ... WHERE id = $1 AND <guards> RETURNING <cols>)
/// <OUTCOME_TAIL: upd's row with updated = TRUE, else cur's with updated = FALSE>
/// ```
///
/// No row: the id does not exist. `updated`: `row` is what the statement wrote. Otherwise `row` is the row as
/// the statement found it, which is exactly what is needed to name the refusal (a data-modifying CTE and its
/// siblings share one snapshot, so `cur` is the before-image).
#[derive(diesel::QueryableByName)]
pub(crate) struct Outcome<T> {
    #[diesel(sql_type = Bool)]
    pub updated: bool,
    #[diesel(embed)]
    pub row: T,
}

/// The `UNION ALL` tail of an [`Outcome`] statement whose CTEs are named `cur` and `upd`.
pub(crate) const OUTCOME_TAIL: &str = "SELECT TRUE AS updated, upd.* FROM upd \
     UNION ALL \
     SELECT FALSE AS updated, cur.* FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)";

/// Decodes a row the statement returned as `to_jsonb(row)` (used where one statement must return rows of two
/// tables whose column names collide).
pub(crate) fn from_json<T: DeserializeOwned>(
    what: &str,
    value: Option<serde_json::Value>,
) -> DatastoreResult<Option<T>> {
    value
        .map(|value| {
            serde_json::from_value(value)
                .map_err(|error| corrupt(format!("decoding a {what} row: {error}")))
        })
        .transpose()
}

/// Nexus names: 1 to 63 characters (the columns are VARCHAR(63)).
pub(crate) fn check_name(kind: &str, name: &str) -> DatastoreResult<()> {
    let length = name.chars().count();
    if length == 0 || length > 63 {
        return Err(DatastoreError::InvalidArgument(format!(
            "{kind} name {name:?} must be 1 to 63 characters"
        )));
    }
    Ok(())
}

/// A value that must be positive.
pub(crate) fn check_positive(what: &str, value: i64) -> DatastoreResult<()> {
    if value <= 0 {
        return Err(DatastoreError::InvalidArgument(format!(
            "{what} must be positive, got {value}"
        )));
    }
    Ok(())
}

/// A value that must not be negative.
pub(crate) fn check_non_negative(what: &str, value: i64) -> DatastoreResult<()> {
    if value < 0 {
        return Err(DatastoreError::InvalidArgument(format!(
            "{what} must not be negative, got {value}"
        )));
    }
    Ok(())
}
