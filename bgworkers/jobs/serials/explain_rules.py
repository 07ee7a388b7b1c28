"""What the serial check would conclude about one serial, from rows already read.  Pure.

The rules are the job's own (`token_outcomes`, `unlinked_outcome`, `hash_verdict`
of bgworkers.jobs.serials.consistency); this module only adds the words: why,
and what a run would do or has already recorded.

A conclusion is a dict: `outcome` (a quarantine reason, `legacy`,
`missing_core_link`, `missing_tenant_link`, or `ok`, `not_live`, `linked`,
`unlinked` when the check has nothing to do, `bad_row` when it skips the row as
unusable), `source_table`, `source_id`,
`detail`, `action`, and `existing_row` (the open quarantine row or pending
outbox row that already records it, else None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bgworkers.engine.clock import naive_utc
from bgworkers.jobs.serials.checks import FINISHED_TICKET_STATUSES
from bgworkers.jobs.serials.consistency import (
    NOT_QUARANTINED,
    OUTCOME_COUNTERS,
    Registered,
    date_problem,
    hash_verdict,
    salt_key,
    token_outcomes,
    unlinked_outcome,
)
from bgworkers.jobs.serials.format import (
    STANDARD_RE,
    Kind,
    checksum,
    classify,
    compile_patterns,
    component_parent,
    parse_standard,
)
from bgworkers.settings import Settings, format_duration

Record = dict[str, Any]
QUARANTINED = frozenset(OUTCOME_COUNTERS) - NOT_QUARANTINED
_STANDARD_PARTS = 7


def describe_format(serial: str, exempt_patterns: Sequence[str]) -> Record:
    """{"kind": a serials.Kind value, "detail": why}."""
    kind = classify(serial, compile_patterns(exempt_patterns))
    parsed = parse_standard(serial)
    if kind is Kind.STANDARD and parsed is not None:
        detail = (
            f"tenant {parsed.tenant}, type {parsed.type}, sku {parsed.sku}, "
            f"date {parsed.day}, sequence {parsed.seq}, hash {parsed.hash4}, "
            f"check character {parsed.check} (right)"
        )
    elif kind is Kind.CHECKSUM_FAIL:
        detail = f"expected check character {checksum(serial[:-2])}, found {serial[-1]}"
    elif kind is Kind.EXEMPT:
        detail = "exempt: " + next(p for p in exempt_patterns if re.search(p, serial))
    elif kind is Kind.COMPONENT:
        detail = f"component of {_parent(serial)}"
    elif component_parent(serial) is not None:
        parent = _parent(serial)
        detail = f"component of {parent}, whose check character should be {checksum(parent[:-2])}"
    elif (match := STANDARD_RE.fullmatch(serial)) is not None:
        detail = f"standard shape, but {match.group(4)} is not a valid date"
    else:
        detail = "neither standard, nor exempt, nor a component of a valid serial"
    return {"kind": kind.value, "detail": detail}


def _parent(serial: str) -> str:
    return "-".join(serial.split("-")[:_STANDARD_PARTS])


def _ids(ids: Sequence[int]) -> str:
    text = [str(i) for i in ids]
    return text[0] if len(text) == 1 else f"{', '.join(text[:-1])} and {text[-1]}"


def _at(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


class Judge:
    """The check's view of one serial: its format and core registry row, then per tenant."""

    def __init__(
        self,
        settings: Settings,
        serial: str,
        registry: Record | None,
        registry_read: bool,
        utc_now: datetime,
    ) -> None:
        job = settings.jobs.serial_consistency
        self.serial, self.registry, self.registry_read = serial, registry, registry_read
        self.kind = classify(serial, compile_patterns(job.exempt_patterns))
        self.format_detail = str(describe_format(serial, job.exempt_patterns)["detail"])
        self.live = set(settings.erp.live_token_statuses)
        self.erp_tz = settings.erp.tz
        self.orphan_after = job.orphan_after
        self.cutoff = utc_now - job.orphan_after
        salts = {key: salt.get_secret_value() for key, salt in job.salts.items()}
        self.hash_check = self._hash_check(salts)
        # the tenant being concluded on (set by `conclude`)
        self._own: Record | None = None
        self._tenant_id = 0
        self._pieces: list[int] = []
        self._outbox: list[Record] = []
        self._quarantine: list[Record] = []

    def _hash_check(self, salts: dict[str, str]) -> str | None:
        """right, wrong, no_salt (none for its type:version), not_configured; None: no row."""
        reg = self.registry
        if reg is None:
            return None
        if not salts:
            return "not_configured"
        verdict = hash_verdict(
            self.serial,
            reg["production_type"],
            reg["hash_salt_version"],
            reg["hash_signature"],
            salts,
        )
        return "no_salt" if verdict is None else "right" if verdict else "wrong"

    @property
    def salt_key(self) -> str:
        reg = self.registry or {}
        return salt_key(str(reg.get("production_type")), reg.get("hash_salt_version"))

    def conclude(
        self,
        tenant_id: int,
        tokens: list[Record],
        jts: Record | None,
        outbox: list[Record],
        quarantine: list[Record],
    ) -> list[Record]:
        """Conclusions for one tenant's rows; marks each open quarantine row `still_found`."""
        self._outbox, self._quarantine = outbox, quarantine
        reg = self.registry
        own = reg if reg is not None and int(reg["tenant_id"]) == tenant_id else None
        self._own, self._tenant_id = own, tenant_id
        link = None if own is None else Registered(str(own["production_type"]), own["dag_token_id"])
        self._pieces = [
            int(t["id_token"])
            for t in tokens
            if t["token_type"] == "piece" and t["status"] in self.live
        ]
        out = [] if jts is None else [self._job_ticket_serial(jts, tokens)]
        for token in tokens:
            tid = int(token["id_token"])
            if token["status"] not in self.live:
                out.append(
                    self._make(
                        "not_live",
                        "flow_token",
                        tid,
                        f"status {token['status']} is not live",
                        "not checked",
                    )
                )
                continue
            duplicated = token["token_type"] == "piece" and len(self._pieces) > 1
            outcomes = token_outcomes(
                self.kind,
                token["token_type"],
                tid,
                duplicated,
                link,
                own is not None and self.hash_check == "wrong",
                self.registry_read,
            )
            out.extend(
                self._make(o, "flow_token", tid, self._detail(o, token)) for o in outcomes or ["ok"]
            )
        found = {(c["outcome"], c["source_table"], c["source_id"]) for c in out}
        for row in quarantine:
            row["still_found"] = (
                None
                if row["resolved_at"] is not None
                else ((row["reason"], row["source_table"], row["source_id"]) in found)
            )
        return out

    # ------------------------------------------------------------ words

    def _make(
        self, outcome: str, table: str, source_id: int, detail: str, action: str | None = None
    ) -> Record:
        existing = None
        if outcome == "legacy":
            action = "left alone: counted as legacy, never quarantined"
        elif action is None and outcome == "missing_core_link":
            existing = next(
                (
                    r["id"]
                    for r in self._outbox
                    if r["status"] == "pending" and r["dag_token_id"] == source_id
                ),
                None,
            )
            action = (
                f"would enqueue ({self.serial}, token {source_id}) to the outbox"
                if existing is None
                else f"already pending in the outbox (row {existing})"
            )
        elif action is None and outcome in QUARANTINED:
            existing = next(
                (
                    r["id"]
                    for r in self._quarantine
                    if r["resolved_at"] is None
                    and r["reason"] == outcome
                    and (r["source_table"], r["source_id"]) == (table, source_id)
                ),
                None,
            )
            action = (
                "would quarantine"
                if existing is None
                else f"already quarantined (open row {existing})"
            )
        return {
            "outcome": outcome,
            "source_table": table,
            "source_id": source_id,
            "detail": detail,
            "action": action or "nothing to do",
            "existing_row": existing,
        }

    def _detail(self, outcome: str, token: Record) -> str:
        own, reg, tid = self._own, self.registry, int(token["id_token"])
        if outcome in ("legacy", "invalid_format", "checksum_fail"):
            return self.format_detail
        if outcome == "duplicate":
            return f"on live piece tokens {_ids(self._pieces)}"
        if outcome == "hash_fail":
            return f"the registry hash_signature does not sign it (salt {self.salt_key})"
        if outcome == "unregistered":
            if reg is None:
                return "no core registry row"
            return (
                f"the registry row belongs to tenant {reg['tenant_code'] or '?'} "
                f"(id {reg['tenant_id']}), not to this tenant (id {self._tenant_id})"
            )
        if outcome == "missing_core_link":
            return "its hatthasilpa registry row has no dag_token_id"
        if outcome == "registry_mismatch":
            assert own is not None
            return f"registry linked to token {own['dag_token_id']}, live token is {tid}"
        return self._ok_detail(token)

    def _ok_detail(self, token: Record) -> str:
        own = self._own
        if not self.registry_read:
            return "valid standard serial; registry not checked (core could not be read)"
        hashed = "; hash signature right" if own is not None and self.hash_check == "right" else ""
        if token["token_type"] != "piece":
            return f"valid standard serial{hashed}; links are checked on piece tokens only"
        if own is not None and own["dag_token_id"] is None:
            return (
                f"registered as {own['production_type']}, not linked: only hatthasilpa "
                f"rows get a core link{hashed}"
            )
        return f"registered for this tenant and linked to this token{hashed}"

    def _job_ticket_serial(self, jts: Record, tokens: list[Record]) -> Record:
        sid, status = int(jts["id_serial"]), jts["ticket_status"]
        ticket = f"ticket {jts['ticket_code'] or jts['id_job_ticket']} ({status or 'missing'})"
        if jts["spawned_token_id"] is not None:
            return self._make(
                "linked",
                "job_ticket_serial",
                sid,
                f"tenant link set to token {jts['spawned_token_id']}",
                "nothing to do (the check looks at unlinked rows only)",
            )
        first = min(self._pieces, default=None)
        generated = jts["generated_at"]
        if not isinstance(generated, datetime):  # the check needs it only for an orphan
            if first is None and not tokens and status not in FINISHED_TICKET_STATUSES:
                return self._make(
                    "bad_row",
                    "job_ticket_serial",
                    sid,
                    date_problem("generated_at", generated),
                    "skipped by the check and counted in bad_rows until the date is fixed",
                )
            generated = self.cutoff  # not older than orphan_after: the date plays no part
        outcome = unlinked_outcome(first, bool(tokens), status, generated, self.cutoff)
        if outcome == "missing_tenant_link":
            token = next(t for t in tokens if t["id_token"] == first)
            if not isinstance(token["spawned_at"], datetime):
                assert first is not None
                return self._make(
                    "bad_row",
                    "flow_token",
                    first,
                    date_problem("spawned_at", token["spawned_at"]),
                    "the tenant link is not set (counted in bad_rows) until the date is fixed",
                )
            at = naive_utc(token["spawned_at"], self.erp_tz)
            return self._make(
                outcome,
                "job_ticket_serial",
                sid,
                f"not linked while live piece token {first} carries it",
                f"would set spawned_token_id = {first}, spawned_at = {_at(at)} UTC",
            )
        if outcome == "orphaned":
            why = (
                f"{ticket} is finished"
                if status in FINISHED_TICKET_STATUSES
                else f"generated {_at(jts['generated_at'])} UTC, older than orphan_after "
                f"= {format_duration(self.orphan_after)}"
            )
            return self._make(
                outcome, "job_ticket_serial", sid, f"never linked, carried by no token, {why}"
            )
        if tokens:
            ids = _ids([int(t["id_token"]) for t in tokens])
            detail = f"not linked; carried only by tokens that are not live pieces: {ids}"
        else:
            detail = (
                f"not linked, carried by no token yet, {ticket}; orphaned from "
                f"{_at(generated + self.orphan_after)} UTC if still unused"
            )
        return self._make("unlinked", "job_ticket_serial", sid, detail, "nothing to do yet")
