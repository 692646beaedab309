//! diesel's description of the saga-log tables (see `migrations/`).

diesel::table! {
    saga (id) {
        id -> Uuid,
        creator -> Uuid,
        time_created -> Timestamptz,
        name -> Text,
        saga_dag -> Jsonb,
        definition_version -> Int4,
        saga_state -> Text,
        current_sec -> Nullable<Uuid>,
        adopt_generation -> Int8,
        adopt_time -> Timestamptz,
        time_finished -> Nullable<Timestamptz>,
        stuck_node -> Nullable<Text>,
        stuck_reason -> Nullable<Text>,
        abandon_reason -> Nullable<Text>,
        time_stuck -> Nullable<Timestamptz>,
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

diesel::allow_tables_to_appear_in_same_query!(
    saga,
    saga_node_event,
    saga_commit_record,
    saga_compensation_record
);
