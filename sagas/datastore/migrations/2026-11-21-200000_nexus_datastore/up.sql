-- The Nexus-shaped datastore (ratchet-datastore): the tables of omicron's dbinit.sql that the instance-create,
-- disk-attach, disk-detach and snapshot-create sagas touch, simplified. Column names are Nexus's.
--
-- CockroachDB subset: no enum types (states are TEXT with CHECK constraints), no foreign keys (Nexus avoids them),
-- no triggers, no functions. Soft delete is `time_deleted` plus partial unique indexes over the live rows.

CREATE TABLE project (
    id UUID PRIMARY KEY,
    name VARCHAR(63) NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
CREATE UNIQUE INDEX lookup_project_by_name ON project (name) WHERE time_deleted IS NULL;

CREATE TABLE instance (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    name VARCHAR(63) NOT NULL,
    ncpus BIGINT NOT NULL CHECK (ncpus > 0),
    memory BIGINT NOT NULL CHECK (memory > 0),
    state TEXT NOT NULL CHECK (state IN ('creating', 'no_vmm', 'vmm', 'failed', 'destroyed')),
    state_generation BIGINT NOT NULL,
    boot_disk_id UUID,
    active_propolis_id UUID,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    -- As in Nexus: an instance has an active VMM exactly when it is in state `vmm`.
    CONSTRAINT vmm_iff_active_propolis CHECK (
        (state = 'vmm' AND active_propolis_id IS NOT NULL)
        OR (state <> 'vmm' AND active_propolis_id IS NULL)
    )
);
CREATE UNIQUE INDEX lookup_instance_by_project ON instance (project_id, name) WHERE time_deleted IS NULL;

CREATE TABLE disk (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    name VARCHAR(63) NOT NULL,
    size_bytes BIGINT NOT NULL CHECK (size_bytes > 0),
    -- A label, not an enum (omicron#312); the attach states carry the instance in attach_instance_id.
    disk_state VARCHAR(32) NOT NULL CHECK (
        disk_state IN ('creating', 'detached', 'attached', 'maintenance', 'faulted', 'destroyed')
    ),
    attach_instance_id UUID,
    -- MAX_DISKS_PER_INSTANCE = 12: slots 0..=11. With the unique index below this also bounds the number of
    -- disks attached to one instance, whatever the queries do.
    slot SMALLINT CHECK (slot >= 0 AND slot < 12),
    state_generation BIGINT NOT NULL,
    volume_id UUID NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
CREATE UNIQUE INDEX lookup_disk_by_project ON disk (project_id, name) WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX lookup_disk_by_instance_slot ON disk (attach_instance_id, slot)
    WHERE time_deleted IS NULL AND attach_instance_id IS NOT NULL;

CREATE TABLE vpc_subnet (
    id UUID PRIMARY KEY,
    name VARCHAR(63) NOT NULL,
    -- An IPv4 network such as 172.30.0.0/24. Addresses are allocated from it with generate_series, so the
    -- block is bounded to /16 (65,536 candidates); /29 is the smallest with a usable address.
    ipv4_block INET NOT NULL CHECK (family(ipv4_block) = 4 AND masklen(ipv4_block) BETWEEN 16 AND 29),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

CREATE TABLE network_interface (
    id UUID PRIMARY KEY,
    instance_id UUID NOT NULL,
    subnet_id UUID NOT NULL,
    name VARCHAR(63) NOT NULL,
    ip INET NOT NULL,
    -- MAX_NICS_PER_INSTANCE = 8.
    slot SMALLINT NOT NULL CHECK (slot >= 0 AND slot < 8),
    is_primary BOOL NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
CREATE UNIQUE INDEX network_interface_subnet_id_ip_key ON network_interface (subnet_id, ip)
    WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX network_interface_instance_id_slot_key ON network_interface (instance_id, slot)
    WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX network_interface_instance_id_name_key ON network_interface (instance_id, name)
    WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX network_interface_instance_id_primary_key ON network_interface (instance_id)
    WHERE is_primary AND time_deleted IS NULL;

CREATE TABLE ip_pool (
    id UUID PRIMARY KEY,
    name VARCHAR(63) NOT NULL,
    is_default BOOL NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
CREATE UNIQUE INDEX lookup_pool_by_name ON ip_pool (name) WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX one_default_ip_pool ON ip_pool (is_default) WHERE is_default AND time_deleted IS NULL;

CREATE TABLE ip_pool_range (
    id UUID PRIMARY KEY,
    ip_pool_id UUID NOT NULL,
    first_address INET NOT NULL,
    last_address INET NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    CONSTRAINT check_address_order CHECK (first_address <= last_address),
    CONSTRAINT check_host_addresses CHECK (
        family(first_address) = 4 AND masklen(first_address) = 32
        AND family(last_address) = 4 AND masklen(last_address) = 32
    )
);
CREATE INDEX lookup_ip_pool_range_by_pool ON ip_pool_range (ip_pool_id, first_address)
    WHERE time_deleted IS NULL;

CREATE TABLE external_ip (
    id UUID PRIMARY KEY,
    ip_pool_id UUID NOT NULL,
    ip_pool_range_id UUID NOT NULL,
    ip INET NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('snat', 'ephemeral')),
    state TEXT NOT NULL CHECK (state IN ('attaching', 'attached', 'detaching', 'detached')),
    parent_id UUID,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ,
    CONSTRAINT detached_null_parent_id CHECK (state = 'detached' OR parent_id IS NOT NULL)
);
-- Nexus keys this on (ip, first_port) because SNAT addresses are shared by port range; here one row owns an
-- address.
CREATE UNIQUE INDEX external_ip_unique ON external_ip (ip) WHERE time_deleted IS NULL;
CREATE UNIQUE INDEX lookup_external_ip_by_parent ON external_ip (parent_id, id)
    WHERE parent_id IS NOT NULL AND time_deleted IS NULL;
CREATE UNIQUE INDEX one_ephemeral_ip_per_instance ON external_ip (parent_id)
    WHERE kind = 'ephemeral' AND parent_id IS NOT NULL AND time_deleted IS NULL;
CREATE UNIQUE INDEX one_snat_ip_per_instance ON external_ip (parent_id)
    WHERE kind = 'snat' AND parent_id IS NOT NULL AND time_deleted IS NULL;

CREATE TABLE snapshot (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    disk_id UUID NOT NULL,
    volume_id UUID NOT NULL,
    name VARCHAR(63) NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'faulted', 'destroyed')),
    size_bytes BIGINT NOT NULL CHECK (size_bytes > 0),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);
CREATE UNIQUE INDEX lookup_snapshot_by_project ON snapshot (project_id, name) WHERE time_deleted IS NULL;

CREATE TABLE volume (
    id UUID PRIMARY KEY,
    -- The volume construction request (Nexus stores it as JSON text).
    data JSONB NOT NULL,
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

CREATE TABLE sled (
    id UUID PRIMARY KEY,
    hostname TEXT NOT NULL,
    usable_hardware_threads BIGINT NOT NULL CHECK (usable_hardware_threads >= 0),
    usable_physical_ram BIGINT NOT NULL CHECK (usable_physical_ram >= 0),
    reservoir_size BIGINT NOT NULL CHECK (reservoir_size >= 0 AND reservoir_size <= usable_physical_ram),
    time_created TIMESTAMPTZ NOT NULL,
    time_modified TIMESTAMPTZ NOT NULL,
    time_deleted TIMESTAMPTZ
);

-- A reservation of a sled's resources for one VMM (id = the propolis id). Deleted outright, as in Nexus.
CREATE TABLE sled_resource_vmm (
    id UUID PRIMARY KEY,
    sled_id UUID NOT NULL,
    instance_id UUID NOT NULL,
    hardware_threads BIGINT NOT NULL CHECK (hardware_threads >= 0),
    rss_ram BIGINT NOT NULL CHECK (rss_ram >= 0),
    reservoir_ram BIGINT NOT NULL CHECK (reservoir_ram >= 0)
);
CREATE INDEX lookup_sled_resource_vmm_by_sled ON sled_resource_vmm (sled_id);
CREATE INDEX lookup_sled_resource_vmm_by_instance ON sled_resource_vmm (instance_id);
