"""What the demo atelier is made of: the profile knobs, organizations, routes, teams, products.

Everything here is static data or a pure function of it; randomness lives in
the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Demo hash salts, one 64-hex salt per production type (version `DEMO_SALT_VERSION`).
#: `serial_registry.hash_signature` is the hex HMAC-SHA256 of the full serial keyed
#: with the ASCII of the salt of the row's production type.  They are public
#: test values (sha256 of "bgworkers demo salt <type>"), never real secrets:
#: configure them as the salts of a demo install to let the hash check pass.
DEMO_SALTS: dict[str, str] = {
    "hatthasilpa": "2e25c78d09fa05580ac703825cb3ffb3894fbcb7d5062c8c381198f611fff5ce",
    "oem": "023c444e933cc2bd9fcb69c40f154d385bbc5acb3baff3ac33287ffadac30dc2",
}
DEMO_SALT_VERSION = 1


@dataclass(frozen=True)
class Profile:
    """Size and shape of the generated data for one tenant; the CLI uses the defaults.

    `serials` job-ticket serials are made per unit of `scale`, and as many piece
    tokens and registry rows (plus a few percent of batch and component tokens).
    The history covers `span_days` at scale 1 and grows with scale up to
    `max_span_days` (larger scales then get busier days).  Tokens spawned in the
    last `history_days` keep their full event history (enter/start/complete/exit
    per node, assignments); older ones keep only spawn + complete_token (or
    scrap), and none at all past `archive_days` (the ERP archives them).
    `events`, when set, replaces those two windows by a target number of
    token_event rows per tenant (not scaled; reached within a few percent, but
    never below the histories that stay full whatever the target: live tokens,
    tickets still in progress, planted cases).
    """

    serials: int = 1000
    span_days: int = 60
    max_span_days: int = 1095
    history_days: int = 30
    archive_days: int | None = 180
    events: int | None = None
    graphs: int = 3
    nodes: int = 24
    teams: int = 6
    members: int = 36
    min_ticket: int = 10
    max_ticket: int = 40
    anomaly_rate: float = 0.001
    chunk_rows: int = 10_000


PROFILE = Profile()


@dataclass(frozen=True)
class Org:
    id: int
    code: str
    name: str
    status: str
    serial_code: str

    @property
    def legacy_prefix(self) -> str:
        """The prefix of the tenant's pre-ERP serials (PREFIX-YYYY-XXXXXX): its whole serial
        code, as a shorter cut (AT0 for AT003...AT099) would be shared between tenants."""
        return self.serial_code


def organizations(tenants: int) -> list[Org]:
    """The demo organizations: `tenants` active ones, then one inactive (it gets no database)."""
    orgs = [
        Org(1, "DEFAULT", "Bellavier Atelier", "active", "BLVR"),
        Org(2, "maison_atelier", "Maison Atelier", "1", "MAIS"),
    ][:tenants]
    for n in range(3, tenants + 1):
        orgs.append(Org(n, f"atelier_{n:03d}", f"Atelier {n:03d}", "active", f"AT{n:03d}"))
    closed = tenants + 1
    orgs.append(Org(closed, "closed_atelier", "Atelier Chiang Mai (closed)", "inactive", "CLSD"))
    return orgs


# ------------------------------------------------------------------ routes

#: (node_code, node_name, node_type, team category, work minutes low, high)
Step = tuple[str, str, str, str, int, int]

HAT_BAG: tuple[Step, ...] = (
    ("LEATHER_SEL", "Leather selection", "operation", "cutting", 10, 40),
    ("CUT", "Hand cutting", "operation", "cutting", 30, 120),
    ("SKIV", "Skiving", "operation", "preparation", 20, 60),
    ("EDGE_PAINT", "Edge painting", "operation", "finishing", 30, 150),
    ("GLUE", "Gluing and assembly", "operation", "preparation", 30, 90),
    ("STITCH", "Saddle stitching", "operation", "stitching", 60, 240),
    ("HARDWARE", "Hardware fitting", "operation", "finishing", 15, 45),
    ("EDGE_FINISH", "Edge burnishing", "operation", "finishing", 30, 90),
    ("QC", "Final QC", "qc", "qc", 10, 30),
    ("PACK", "Packing", "operation", "packing", 5, 15),
)
CLASSIC: tuple[Step, ...] = (
    ("CLICK", "Clicking (press cutting)", "operation", "cutting", 5, 20),
    ("SKIV_M", "Machine skiving", "operation", "preparation", 5, 15),
    ("STAMP", "Foil stamping", "operation", "finishing", 3, 10),
    ("STITCH_M", "Machine stitching", "operation", "stitching", 10, 40),
    ("EDGE_PAINT", "Edge painting", "operation", "finishing", 10, 40),
    ("QC_INLINE", "Inline QC", "qc", "qc", 3, 10),
    ("PACK", "Packing", "operation", "packing", 2, 8),
)
HAT_SLG: tuple[Step, ...] = (
    ("CUT", "Hand cutting", "operation", "cutting", 15, 60),
    ("SKIV", "Skiving", "operation", "preparation", 10, 40),
    ("EDGE_PAINT", "Edge painting", "operation", "finishing", 20, 90),
    ("STITCH", "Saddle stitching", "operation", "stitching", 30, 120),
    ("EDGE_FINISH", "Edge burnishing", "operation", "finishing", 20, 60),
    ("QC", "Final QC", "qc", "qc", 5, 20),
    ("PACK", "Packing", "operation", "packing", 3, 10),
)

#: (code, name, production_type, steps, SKU catalogue) of the graph templates, cycled.
GRAPH_TEMPLATES: tuple[tuple[str, str, str, tuple[Step, ...], tuple[str, ...]], ...] = (
    (
        "HAT-BAG",
        "Hatthasilpa handbags",
        "hatthasilpa",
        HAT_BAG,
        ("TOTE01", "SATCH02", "BUCKET03", "CLUTCH04", "MINI05", "DOCTOR06", "TESTP822"),
    ),
    (
        "CLS-OEM",
        "Classic OEM small leather goods",
        "classic",
        CLASSIC,
        ("OEMWL21", "OEMCH22", "OEMBT23", "OEMTG24"),
    ),
    (
        "HAT-SLG",
        "Hatthasilpa small leather goods",
        "hatthasilpa",
        HAT_SLG,
        ("WALLET11", "CARDH12", "KEYC13", "COIN14", "PASSP15"),
    ),
)

PRODUCTS = {
    "TOTE01": "Tote bag",
    "SATCH02": "Satchel",
    "BUCKET03": "Bucket bag",
    "CLUTCH04": "Clutch",
    "MINI05": "Mini bag",
    "DOCTOR06": "Doctor bag",
    "TESTP822": "Test piece 822",
    "OEMWL21": "OEM long wallet",
    "OEMCH22": "OEM card holder",
    "OEMBT23": "OEM belt",
    "OEMTG24": "OEM luggage tag",
    "WALLET11": "Wallet",
    "CARDH12": "Card holder",
    "KEYC13": "Key case",
    "COIN14": "Coin purse",
    "PASSP15": "Passport cover",
}
LEATHERS = (
    "Togo cognac",
    "Epsom black",
    "Barenia natural",
    "Box calf navy",
    "Swift etoupe",
    "Chevre rouge",
    "Clemence gold",
)


@dataclass(frozen=True)
class GraphSpec:
    id: int
    code: str
    name: str
    production_type: str
    steps: tuple[Step, ...]
    skus: tuple[str, ...]


def graph_specs(graphs: int, nodes: int) -> list[GraphSpec]:
    """`graphs` routing graphs sharing `nodes` nodes (in proportion to their templates)."""
    templates = [GRAPH_TEMPLATES[g % len(GRAPH_TEMPLATES)] for g in range(graphs)]
    total = sum(len(t[3]) for t in templates)
    specs: list[GraphSpec] = []
    left = nodes
    for g, (code, name, ptype, steps, skus) in enumerate(templates):
        want = left if g == graphs - 1 else max(2, round(nodes * len(steps) / total))
        want = max(2, min(want, left - 2 * (graphs - g - 1)))
        left -= want
        rnd = g // len(GRAPH_TEMPLATES)
        suffix = f"-{rnd + 1}" if rnd else ""
        specs.append(
            GraphSpec(
                g + 1,
                code + suffix,
                name + (f" {rnd + 1}" if rnd else ""),
                ptype,
                _fit(steps, want),
                skus,
            )
        )
    return specs


def _fit(steps: tuple[Step, ...], want: int) -> tuple[Step, ...]:
    """`want` steps in route order: drop middle steps, or repeat them as extra passes."""
    if want <= len(steps):
        keep = sorted({round(i * (len(steps) - 1) / (want - 1)) for i in range(want)})
        return tuple(steps[i] for i in keep)
    middle = steps[1:-2]  # the first step and the final QC + packing stay in place
    extra: list[Step] = []
    for n in range(want - len(steps)):
        code, name, ntype, cat, lo, hi = middle[n % len(middle)]
        rnd = n // len(middle) + 2
        extra.append((f"{code}_{rnd}", f"{name} (pass {rnd})", ntype, cat, lo, hi))
    return steps[:-2] + tuple(extra) + steps[-2:]


# ------------------------------------------------------------------ teams

CATEGORIES = ("cutting", "preparation", "stitching", "finishing", "qc", "packing")
TEAM_NAMES = {
    "cutting": "Cutting",
    "preparation": "Preparation",
    "stitching": "Stitching",
    "finishing": "Edge and finishing",
    "qc": "Quality control",
    "packing": "Packing",
}
FIRST_MEMBER_ID = 101


@dataclass(frozen=True)
class TeamSpec:
    id: int
    code: str
    name: str
    category: str
    active: bool


def team_specs(teams: int) -> list[TeamSpec]:
    """`teams` active teams over the categories, plus one disbanded (inactive) team."""
    specs = []
    for i in range(teams):
        cat = CATEGORIES[i % len(CATEGORIES)]
        letter = chr(ord("A") + i // len(CATEGORIES) % 26)
        rnd = i // (len(CATEGORIES) * 26)
        tag = f"{letter}{rnd + 1}" if rnd else letter
        specs.append(
            TeamSpec(i + 1, f"{cat[:3].upper()}-{tag}", f"{TEAM_NAMES[cat]} team {tag}", cat, True)
        )
    specs.append(
        TeamSpec(teams + 1, "STI-NIGHT", "Stitching night shift (disbanded)", "stitching", False)
    )
    return specs


def memberships(teams: int, members: int) -> list[tuple[int, int, bool]]:
    """(id_team, id_member, active): one home team each; some in two teams; some left a team."""
    rows: dict[tuple[int, int], bool] = {}
    for i in range(members):
        member = FIRST_MEMBER_ID + i
        rows[(i % teams + 1, member)] = True
        if i % 5 == 0 and teams > 1:
            rows[((i + 1) % teams + 1, member)] = True  # works in two teams
        if i % 7 == 3 and teams > 2:
            rows.setdefault(((i + 2) % teams + 1, member), False)  # left that team
        if i < 3:
            rows[(teams + 1, member)] = False  # the disbanded night shift
    return [(team, member, active) for (team, member), active in sorted(rows.items())]
