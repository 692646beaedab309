//! diesel's description of the saga-log tables (see `migrations/`).
//!
//! `saga` and `saga_node_event` are Omicron's tables, with ratchet's nullable columns added to `saga`;
//! `saga_state` and `abandon_reason` are PostgreSQL enum types (Omicron's `saga_state`, plus `stuck`, and
//! `saga_abandon_reason`), whose Rust sides are [`crate::saga::SagaState`] and
//! [`crate::saga::AbandonReason`].

/// The PostgreSQL enum types of the saga log.
pub(crate) mod sql_types {
    /// `saga_state`: running, unwinding, done, abandoned (Omicron's), stuck (ratchet's).
    #[derive(diesel::query_builder::QueryId, diesel::sql_types::SqlType, Clone, Copy, Debug)]
    #[diesel(postgres_type(name = "saga_state"))]
    pub struct SagaStateEnum;

    /// `saga_abandon_reason`: omdb, unrecoverable, orphaned.
    #[derive(diesel::query_builder::QueryId, diesel::sql_types::SqlType, Clone, Copy, Debug)]
    #[diesel(postgres_type(name = "saga_abandon_reason"))]
    pub struct SagaAbandonReasonEnum;
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::{SagaAbandonReasonEnum, SagaStateEnum};

    saga (id) {
        id -> Uuid,
        creator -> Uuid,
        time_created -> Timestamptz,
        name -> Text,
        saga_dag -> Jsonb,
        saga_state -> SagaStateEnum,
        current_sec -> Nullable<Uuid>,
        adopt_generation -> Int8,
        adopt_time -> Timestamptz,
        abandon_time -> Nullable<Timestamptz>,
        abandon_reason -> Nullable<SagaAbandonReasonEnum>,
        abandon_comment -> Nullable<Text>,
        definition_version -> Nullable<Int4>,
        time_finished -> Nullable<Timestamptz>,
        stuck_node -> Nullable<Text>,
        stuck_reason -> Nullable<Text>,
        time_stuck -> Nullable<Timestamptz>,
        driven_by_ratchet -> Bool,
    }
}

diesel::table! {
    saga_node_event (saga_id, node_id, event_type) {
        saga_id -> Uuid,
        node_id -> Int8,
        event_type -> Text,
        data -> Nullable<Jsonb>,
        event_time -> Timestamptz,
        creator -> Uuid,
    }
}

diesel::table! {
    saga_commit_record (saga_id, node_name) {
        saga_id -> Uuid,
        node_name -> Text,
        receipt -> Jsonb,
        time_committed -> Timestamptz,
        creator -> Uuid,
        adopt_generation -> Int8,
    }
}

diesel::table! {
    saga_compensation_record (saga_id, node_name) {
        saga_id -> Uuid,
        node_name -> Text,
        had_commit -> Bool,
        time_compensated -> Timestamptz,
        creator -> Uuid,
        adopt_generation -> Int8,
    }
}

diesel::table! {
    saga_undo_failure (saga_id, node_id) {
        saga_id -> Uuid,
        node_id -> Int8,
        data -> Jsonb,
        event_time -> Timestamptz,
        creator -> Uuid,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    saga,
    saga_undo_failure,
    saga_node_event,
    saga_commit_record,
    saga_compensation_record
);
