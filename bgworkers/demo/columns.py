"""The columns the generator writes, per table, in the order of its row tuples."""

from __future__ import annotations

from sqlalchemy import Table

from bgworkers.schema import core, tenant

Columns = dict[str, tuple[Table, tuple[str, ...]]]

_TENANT = {
    "routing_graph": "id_graph code name production_type",
    "routing_node": "id_node id_graph node_code node_name node_type wip_limit sla_minutes",
    "team": "id_team code name team_category active",
    "team_member": "id_team id_member active",
    "job_ticket": "id_job_ticket ticket_code job_name status process_mode production_type sku "
    "target_qty",
    "job_graph_instance": "id_instance id_job_ticket id_graph status production_type",
    "job_ticket_serial": "id_serial id_job_ticket serial_number sequence_no generated_at "
    "spawned_at spawned_token_id",
    "flow_token": "id_token id_instance token_type serial_number current_node_id status "
    "spawned_at start_at completed_at actual_duration_ms",
    "token_event": "id_event id_token event_type from_node_id to_node_id operator_user_id "
    "event_time",
    "token_assignment": "id_assignment id_token id_node assigned_to_user_id status assigned_at",
    "serial_link_outbox": "id serial_code dag_token_id status retry_count last_error created_at "
    "updated_at next_attempt_at",
    "serial_quarantine": "id serial_code source_table source_id reason detected_at resolved_at",
}
_CORE = {
    "serial_registry": "id_serial serial_code tenant_id org_code production_type sku "
    "job_ticket_id dag_token_id status hash_signature hash_salt_version checksum serial_scope "
    "created_at",
}

TENANT_COLUMNS: Columns = {
    name: (tenant.metadata.tables[name], tuple(cols.split())) for name, cols in _TENANT.items()
}
CORE_COLUMNS: Columns = {
    name: (core.metadata.tables[name], tuple(cols.split())) for name, cols in _CORE.items()
}
