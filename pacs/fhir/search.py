"""FHIR search: parameters -> SQL over the index tables, paging, ``_include``/``_revinclude``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    SQLColumnExpression,
    and_,
    false,
    func,
    not_,
    or_,
    select,
)

from pacs.fhir.errors import InvalidSearch, operation_outcome
from pacs.fhir.limits import MAX_INCLUDES, ResourceBudget
from pacs.fhir.resources import Bundle, BundleEntry, BundleLink
from pacs.fhir.schema import FhirDate, FhirReference, FhirResource, FhirString, FhirToken
from pacs.fhir.searchparams import (
    DATE,
    REFERENCE,
    RESULT_PARAMS,
    SEARCH_PARAMS,
    STRING,
    TOKEN,
    SearchParam,
)
from pacs.fhir.validation import load_stored
from pacs.fhir.values import (
    date_range,
    fmt,
    normalise,
    parse_reference,
    split_unescaped,
    unescape_search_value,
)

DEFAULT_COUNT = 20
MAX_COUNT = 1000
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MODIFIERS = {
    TOKEN: {"", "not", "missing"},
    REFERENCE: {"", "missing"},
    DATE: {"", "missing"},
    STRING: {"", "exact", "contains", "missing"},
}

R = FhirResource.__table__
_TABLES = {
    TOKEN: FhirToken.__table__,
    REFERENCE: FhirReference.__table__,
    DATE: FhirDate.__table__,
    STRING: FhirString.__table__,
}


@dataclass
class SearchRequest:
    """A parsed search: what selects, what shapes the result, and what was ignored."""

    resource_type: str
    where: list[ColumnElement[bool]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # for the self link
    ignored: list[str] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    includes: list[tuple[str, str | None]] = field(default_factory=list)  # (param, target)
    revincludes: list[tuple[str, str]] = field(default_factory=list)  # (type, param)
    summary_count: bool = False
    total: bool = True

    def restrict(self, scope: ColumnElement[bool]) -> None:
        """Only resources within ``scope`` (the caller's reach); included resources would
        escape it, so ``_include``/``_revinclude`` are dropped and reported as ignored."""
        self.where.append(scope)
        dropped = [f"_include={p}" for p, _ in self.includes]
        dropped += [f"_revinclude={t}:{p}" for t, p in self.revincludes]
        self.ignored.extend(dropped)
        self.includes, self.revincludes = [], []


# ---------------------------------------------------------------- conditions


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES:
        return value[:2], value[2:]
    return "eq", value


def _date_bounds(value: str, name: str) -> tuple[str, datetime, datetime]:
    prefix, text = _split_prefix(value)
    try:
        low, high = date_range(text)
    except ValueError:
        raise InvalidSearch(
            f"{name}: {value!r} is not a date with an optional prefix ({', '.join(PREFIXES)})",
            expression=[name],
        ) from None
    return prefix, low, high


_Bound = TypeVar("_Bound", str, datetime)


def _range_condition(
    prefix: str,
    lo: SQLColumnExpression[_Bound],
    hi: SQLColumnExpression[_Bound],
    plo: _Bound,
    phi: _Bound,
) -> ColumnElement[bool]:
    """Resource range ``lo..hi`` against the search range ``plo..phi`` (R4 3.1.1.5.6)."""
    eq = and_(lo >= plo, hi <= phi)
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not_(eq)
    if prefix == "gt":
        return hi > phi
    if prefix == "lt":
        return lo < plo
    if prefix == "ge":
        return or_(hi > phi, eq)
    if prefix == "le":
        return or_(lo < plo, eq)
    if prefix == "sa":
        return lo > phi
    if prefix == "eb":
        return hi < plo
    return and_(lo <= phi, hi >= plo)  # ap: overlap of the widened range


def _approximate(low: datetime, high: datetime) -> tuple[datetime, datetime]:
    delta = max(abs(datetime.now(UTC) - low) / 10, timedelta(days=1))
    return low - delta, high + delta


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _value_condition(
    param: SearchParam, table: FromClause, modifier: str, value: str, name: str
) -> ColumnElement[bool]:
    if param.type == TOKEN:
        parts = [unescape_search_value(p) for p in split_unescaped(value, "|", maxsplit=1)]
        if len(parts) == 2:
            system, code = parts
            if not code:
                return table.c.system == system[:255]
            return and_(table.c.system == system[:255], table.c.code == code[:255])
        return table.c.code == parts[0][:255]
    value = unescape_search_value(value)
    if param.type == REFERENCE:
        target = parse_reference(value)
        if target is None:
            if "/" in value or not value:
                raise InvalidSearch(f"{name}: {value!r} is not a reference", expression=[name])
            cond = table.c.target_id == value
            if modifier:
                cond = and_(cond, table.c.target_type == modifier)
            return cond
        return and_(table.c.target_type == target[0], table.c.target_id == target[1])
    if param.type == DATE:
        prefix, low, high = _date_bounds(value, name)
        if prefix == "ap":
            low, high = _approximate(low, high)
        return _range_condition(prefix, table.c.low, table.c.high, fmt(low), fmt(high))
    norm = normalise(value)
    if modifier == "exact":  # the whole string, case and accents included
        return and_(table.c.value == norm, table.c.exact == value[:255])
    pattern = _escape_like(norm)
    pattern = f"%{pattern}%" if modifier == "contains" else f"{pattern}%"
    return table.c.value.like(pattern, escape="\\")


def _param_condition(
    rtype: str, param: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    table = _TABLES[param.type]
    scope = and_(table.c.resource_type == rtype, table.c.param == param.name)
    if modifier == "missing":
        has = R.c.pk.in_(select(table.c.resource_pk).where(scope))
        if values == ["true"]:
            return not_(has)
        if values == ["false"]:
            return has
        raise InvalidSearch(f"{name}: :missing takes true or false", expression=[name])
    type_modifier = modifier if param.type in (REFERENCE, STRING) else ""
    conds = [_value_condition(param, table, type_modifier, v, name) for v in values]
    sub = select(table.c.resource_pk).where(scope, or_(*conds))
    if modifier == "not":
        return R.c.pk.not_in(sub)
    return R.c.pk.in_(sub)


def _common_condition(name: str, values: list[str]) -> ColumnElement[bool]:
    if name == "_id":
        return R.c.id.in_([unescape_search_value(v) for v in values])
    conds = []
    for value in values:
        prefix, low, high = _date_bounds(value, name)
        if prefix == "ap":
            low, high = _approximate(low, high)
        col = R.c.last_updated
        conds.append(_range_condition(prefix, col, col, low, high))
    return or_(*conds)


def _chain_condition(
    rtype: str, param: SearchParam, modifier: str, rest: str, values: list[str], name: str
) -> ColumnElement[bool]:
    targets = (modifier,) if modifier else param.targets
    if len(targets) != 1:
        raise InvalidSearch(
            f"{name}: the chain needs a target type, e.g. {param.name}:Patient.{rest}",
            expression=[name],
        )
    target = targets[0]
    if target not in SEARCH_PARAMS:
        raise InvalidSearch(f"{name}: unknown resource type {target}", expression=[name])
    inner = condition(target, rest, values, name)
    if inner is None:
        raise InvalidSearch(f"{name}: unknown parameter {rest!r} of {target}", expression=[name])
    table = FhirReference.__table__
    # the inner condition is on fhir_resource of the target: no correlation with the outer one
    ids = (
        select(R.c.id)
        .where(R.c.resource_type == target, R.c.deleted == false(), inner)
        .correlate(None)
    )
    sub = select(table.c.resource_pk).where(
        table.c.resource_type == rtype,
        table.c.param == param.name,
        table.c.target_type == target,
        table.c.target_id.in_(ids),
    )
    return R.c.pk.in_(sub)


def condition(rtype: str, key: str, values: list[str], name: str) -> ColumnElement[bool] | None:
    """The SQL condition of one ``key=value[,value]`` on ``fhir_resource``; None if unknown."""
    base, _, rest = key.partition(".")
    pname, _, modifier = base.partition(":")
    if pname in ("_id", "_lastUpdated") and not modifier and not rest:
        return _common_condition(pname, values)
    param = SEARCH_PARAMS[rtype].get(pname)
    if param is None:
        return None
    if rest:
        if param.type != REFERENCE:
            raise InvalidSearch(f"{name}: only reference parameters chain", expression=[name])
        return _chain_condition(rtype, param, modifier, rest, values, name)
    type_modifier = param.type == REFERENCE and modifier in SEARCH_PARAMS
    if modifier and modifier not in _MODIFIERS[param.type] and not type_modifier:
        raise InvalidSearch(f"{name}: unsupported modifier :{modifier}", expression=[name])
    return _param_condition(rtype, param, modifier, values, name)


# ---------------------------------------------------------------- parsing


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidSearch(f"{name} must be an integer", expression=[name]) from None
    return max(low, min(high, number))


def parse(
    rtype: str,
    params: list[tuple[str, str]],
    strict: bool = False,
    default_count: int = DEFAULT_COUNT,
) -> SearchRequest:
    """Parse ``params`` (repeated keys are ANDed, comma-separated values ORed).

    An unknown parameter raises ``InvalidSearch`` when ``strict``; otherwise it is left out
    and listed in ``ignored``. A known parameter with a bad value always raises.
    """
    request = SearchRequest(rtype, count=default_count)
    if sum(1 for key, _ in params if key.startswith(("_include", "_revinclude"))) > MAX_INCLUDES:
        raise InvalidSearch(f"at most {MAX_INCLUDES} _include/_revinclude parameters")

    def unknown(key: str, why: str) -> None:
        if strict:
            raise InvalidSearch(why, expression=[key])
        request.ignored.append(key)

    for key, value in params:
        if key in RESULT_PARAMS or key.startswith(("_include", "_revinclude")):
            _result_param(request, key, value, unknown)
            continue
        values = _split_values(value)
        if not values:
            continue
        cond = condition(rtype, key, values, key)
        if cond is None:
            unknown(key, f"unknown search parameter {key!r} for {rtype}")
            continue
        request.where.append(cond)
        request.kept.append((key, value))
    return request


def _split_values(value: str) -> list[str]:
    """Comma-separated values, still escaped (``\\,`` is a literal comma; see
    ``pacs.fhir.values.escape_search_value``): each type unescapes its own."""
    return [p for p in split_unescaped(value, ",") if p != ""]


def _result_param(request: SearchRequest, key: str, value: str, unknown: Any) -> None:
    rtype = request.resource_type
    if key == "_format":
        return
    if key == "_count":
        request.count = _int(key, value, 0, MAX_COUNT)
    elif key == "_offset":
        request.offset = _int(key, value, 0, 10**9)
    elif key == "_summary":
        if value == "count":
            request.summary_count = True
        elif value != "false":
            unknown(key, f"_summary={value} is not supported (count, false)")
            return
    elif key == "_total":
        if value == "none":
            request.total = False
        elif value not in ("accurate", "estimate"):
            raise InvalidSearch("_total is none, estimate or accurate", expression=[key])
    elif key == "_sort":
        for item in value.split(","):
            desc = item.startswith("-")
            name = item.removeprefix("-")
            param = SEARCH_PARAMS[rtype].get(name)
            if name not in ("_id", "_lastUpdated") and (param is None or param.type == REFERENCE):
                unknown(key, f"cannot sort {rtype} by {name!r}")
                return
            request.sort.append((name, desc))
    elif key.startswith(("_include", "_revinclude")) and "*" in value:
        raise InvalidSearch(
            f"{key}={value}: wildcard includes are not supported; name the reference parameter",
            expression=[key],
        )
    elif key == "_include":
        parts = value.split(":")
        param = SEARCH_PARAMS[rtype].get(parts[1]) if len(parts) in (2, 3) else None
        if parts[0] != rtype or param is None or param.type != REFERENCE:
            unknown(key, f"_include={value} is not a reference parameter of {rtype}")
            return
        target = parts[2] if len(parts) == 3 else None
        if target is not None and target not in SEARCH_PARAMS:
            unknown(key, f"_include={value}: unknown target type")
            return
        if (parts[1], target) not in request.includes:
            request.includes.append((parts[1], target))
    elif key == "_revinclude":
        parts = value.split(":")
        source = SEARCH_PARAMS.get(parts[0], {}) if len(parts) in (2, 3) else {}
        param = source.get(parts[1]) if source else None
        if param is None or param.type != REFERENCE:
            unknown(key, f"_revinclude={value} is not a reference parameter")
            return
        if (parts[0], parts[1]) not in request.revincludes:
            request.revincludes.append((parts[0], parts[1]))
    else:
        unknown(key, f"{key} is not supported")
        return
    request.kept.append((key, value))


# ---------------------------------------------------------------- execution


def _sort_key(rtype: str, name: str, desc: bool) -> Any:
    if name == "_id":
        col: Any = R.c.id
    elif name == "_lastUpdated":
        col = R.c.last_updated
    else:
        param = SEARCH_PARAMS[rtype][name]
        table = _TABLES[param.type]
        if param.type == DATE:
            value = table.c.high if desc else table.c.low
        else:
            value = table.c.value if param.type == STRING else table.c.code
        agg = func.max(value) if desc else func.min(value)
        col = (
            select(agg)
            .where(
                table.c.resource_pk == R.c.pk,
                table.c.resource_type == rtype,
                table.c.param == name,
            )
            .scalar_subquery()
        )
    return col.desc().nulls_last() if desc else col.asc().nulls_last()


def _entry(
    base: str, rtype: str, rid: str, content: str, mode: Literal["match", "include"]
) -> BundleEntry:
    return {
        "fullUrl": f"{base}/{rtype}/{rid}",
        "resource": load_stored(content),
        "search": {"mode": mode},
    }


def _link(base: str, rtype: str, kept: list[tuple[str, str]], **extra: int) -> str:
    query = [(k, v) for k, v in kept if k not in ("_count", "_offset")]
    query += [(k, str(v)) for k, v in extra.items()]
    return f"{base}/{rtype}?{urlencode(query)}"


def execute(conn: Connection, request: SearchRequest, base: str, budget: ResourceBudget) -> Bundle:
    """Run a parsed search: a ``searchset`` Bundle with total, links and entries. Its matches
    and includes are spent from ``budget``: a page is shortened to what is left (its ``next``
    link goes on from there), includes beyond it are left out with a warning, and
    ``TooCostly`` is raised when nothing is left."""
    rtype = request.resource_type
    where = [R.c.resource_type == rtype, R.c.deleted == false(), *request.where]
    bundle: Bundle = {"resourceType": "Bundle", "type": "searchset"}

    def total() -> int:
        return int(conn.execute(select(func.count()).select_from(R).where(*where)).scalar_one())

    if request.summary_count or request.count == 0:  # _count=0: the total only
        bundle["total"] = total()
        bundle["link"] = [{"relation": "self", "url": _link(base, rtype, request.kept)}]
        return bundle
    if budget.left < 1:
        budget.take(1)  # raises
    request.count = min(request.count, budget.left)
    order = [_sort_key(rtype, n, d) for n, d in request.sort] + [R.c.pk.asc()]
    columns: list[Any] = [R.c.pk, R.c.id, R.c.content]
    if request.total:  # the count of all matches comes with the page (one round trip)
        columns.append(func.count().over().label("total"))
    rows = conn.execute(
        select(*columns)
        .where(*where)
        .order_by(*order)
        .limit(request.count + 1)
        .offset(request.offset)
    ).all()
    if request.total:
        bundle["total"] = rows[0].total if rows else (total() if request.offset else 0)
    has_next = len(rows) > request.count
    rows = rows[: request.count]
    count, offset = request.count, request.offset
    links: list[BundleLink] = [
        {"relation": "self", "url": _link(base, rtype, request.kept, _count=count, _offset=offset)}
    ]
    if has_next:
        links.append(
            {
                "relation": "next",
                "url": _link(base, rtype, request.kept, _count=count, _offset=offset + count),
            }
        )
    if offset > 0:
        prev = max(0, offset - count)
        links.append(
            {
                "relation": "previous",
                "url": _link(base, rtype, request.kept, _count=count, _offset=prev),
            }
        )
    bundle["link"] = links
    budget.take(len(rows))
    entries = [_entry(base, rtype, row.id, row.content, "match") for row in rows]
    seen = {(rtype, row.id) for row in rows}
    pks = [row.pk for row in rows]
    if pks:
        ids = [row.id for row in rows]
        included, cut = _included(conn, request, base, pks, ids, seen, budget.left)
        budget.take(len(included))
        entries += included
        if cut:
            entries.append(_left_out())
    if request.ignored:
        ignored = ", ".join(request.ignored)
        entries.append(
            {
                "resource": operation_outcome(
                    f"ignored search parameters: {ignored}",
                    code="not-supported",
                    severity="warning",
                    expression=request.ignored,
                ),
                "search": {"mode": "outcome"},
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle


def _left_out() -> BundleEntry:
    return {
        "resource": operation_outcome(
            "included resources left out: a response carries at most "
            "fhir_max_response_resources resources",
            code="too-costly",
            severity="warning",
        ),
        "search": {"mode": "outcome"},
    }


def _included(
    conn: Connection,
    request: SearchRequest,
    base: str,
    pks: list[int],
    ids: list[str],
    seen: set[tuple[str, str]],
    limit: int,
) -> tuple[list[BundleEntry], bool]:
    """The included resources, at most ``limit`` (read no further than one past it); True
    when some were left out."""
    rtype = request.resource_type
    ref = FhirReference.__table__
    out: list[BundleEntry] = []

    def add(rows: Iterable[Any]) -> bool:
        for row in rows:
            if (row.resource_type, row.id) not in seen:
                if len(out) == limit:
                    return False
                seen.add((row.resource_type, row.id))
                out.append(_entry(base, row.resource_type, row.id, row.content, "include"))
        return True

    if request.includes:
        target = R.alias("target")
        wanted = [
            and_(ref.c.param == param, ref.c.target_type == kind) if kind else ref.c.param == param
            for param, kind in request.includes
        ]
        targets = (
            select(target.c.pk)
            .select_from(
                ref.join(
                    target,
                    and_(
                        target.c.resource_type == ref.c.target_type,
                        target.c.id == ref.c.target_id,
                    ),
                )
            )
            .where(ref.c.resource_pk.in_(pks), ref.c.resource_type == rtype, or_(*wanted))
        )
        rows = conn.execute(
            select(R.c.resource_type, R.c.id, R.c.content)
            .where(R.c.pk.in_(targets), R.c.deleted == false())
            .order_by(R.c.resource_type, R.c.id)
            .limit(len(seen) + limit + 1)  # those already in, then one past the limit
        ).all()
        if not add(sorted(rows, key=lambda r: (r.resource_type, r.id))):
            return out, True
    for source, param in request.revincludes:
        sources = select(ref.c.resource_pk).where(
            ref.c.resource_type == source,
            ref.c.param == param,
            ref.c.target_type == rtype,
            ref.c.target_id.in_(ids),
        )
        rows = conn.execute(
            select(R.c.resource_type, R.c.id, R.c.content)
            .where(R.c.pk.in_(sources), R.c.deleted == false())
            .order_by(R.c.pk)
            .limit(len(seen) + limit + 1)
        ).all()
        if not add(rows):
            return out, True
    return out, False


def matching_ids(
    conn: Connection, rtype: str, query: list[tuple[str, str]], limit: int = 2
) -> list[str]:
    """Ids of up to ``limit`` resources matching ``query`` strictly (conditional operations)."""
    request = parse(rtype, query, strict=True)
    if not request.where:
        raise InvalidSearch("a conditional operation needs search criteria")
    rows = conn.execute(
        select(R.c.id)
        .where(R.c.resource_type == rtype, R.c.deleted == false(), *request.where)
        .limit(limit)
    ).all()
    return [row.id for row in rows]
