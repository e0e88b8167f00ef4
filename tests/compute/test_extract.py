"""Extract against real PostgreSQL and an embedded DuckDB file, with the same assertions."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from reconcile_audit.compute import db, extract, resolve
from reconcile_audit.compute.schemas import INVOICES
from reconcile_audit.compute.settings import load_settings
from reconcile_audit.errors import ConfigError, ExtractError, ScopeError, SourceSchemaError
from reconcile_audit.face.demo import sourcedb

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOSTILE_IDS = (
    "'; DROP TABLE invoices; --",
    "quote\"double'single",
    "emoji-🦄-id",
    "ctl\x01\x1f\x7fchars",
    "ünïcødé",
    "back\\slash",
)


def _pk() -> str:
    return str(uuid.uuid4())


class Source:
    """Rows for the three tables, built up by a test and loaded in one go."""

    def __init__(self) -> None:
        self.invoices: list[dict[str, object]] = []
        self.summaries: list[dict[str, object]] = []
        self.operations: list[dict[str, object]] = []

    def invoice(
        self,
        invoice_id: str,
        *,
        status: str = "funded",
        tenant: str | None = "tenant-a",
        currency: str | None = "USDC",
        deleted: bool = False,
        totals: tuple[tuple[Decimal | None, datetime], ...] = (),
        creates: tuple[tuple[str, str, datetime | None], ...] = (),
    ) -> str:
        pk = _pk()
        self.invoices.append(
            {
                "id": pk,
                "invoice_id": invoice_id,
                "tenant_id": tenant,
                "status": status,
                "amount": Decimal("1000.00"),
                "currency": currency,
                "deleted_at": T0 if deleted else None,
            }
        )
        for total, at in totals:
            self.summaries.append({"invoice_id": pk, "total_funded": total, "last_updated_at": at})
        for contract_id, op_status, at in creates:
            self.operations.append(
                {
                    "invoice_id": pk,
                    "operation_type": "create",
                    "contract_id": contract_id,
                    "status": op_status,
                    "completed_at": at,
                }
            )
        return pk

    def operation(self, pk: str, operation_type: str, contract_id: str, status: str, at: datetime) -> None:
        self.operations.append(
            {
                "invoice_id": pk,
                "operation_type": operation_type,
                "contract_id": contract_id,
                "status": status,
                "completed_at": at,
            }
        )

    def load(self, url: str) -> None:
        invoices = pl.DataFrame(
            self.invoices,
            schema={
                "id": pl.String,
                "invoice_id": pl.String,
                "tenant_id": pl.String,
                "status": pl.String,
                "amount": pl.Decimal(15, 2),
                "currency": pl.String,
                "deleted_at": pl.Datetime("us", "UTC"),
            },
        )
        summaries = pl.DataFrame(
            self.summaries,
            schema={
                "invoice_id": pl.String,
                "total_funded": pl.Decimal(15, 2),
                "last_updated_at": pl.Datetime("us", "UTC"),
            },
        )
        operations = pl.DataFrame(
            self.operations,
            schema={
                "invoice_id": pl.String,
                "operation_type": pl.String,
                "contract_id": pl.String,
                "status": pl.String,
                "completed_at": pl.Datetime("us", "UTC"),
            },
        )
        with db.connect(url) as conn:
            sourcedb.load_source_rows(conn, invoices, summaries, operations)


def _extract(url: str, **params: object) -> pl.DataFrame:
    return extract.extract_invoices(load_settings({"database_url": url, **params}, {}))


def _by_id(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    return {row["invoice_id"]: row for row in frame.iter_rows(named=True)}


def test_scope_summaries_and_operations(source_url: str) -> None:
    src = Source()
    src.invoice("A-plain", totals=((Decimal("1250.00"), T0),), creates=(("CPLAIN", "completed", T0),))
    src.invoice("B-linked", status="linked_escrow")
    src.invoice("C-partial", status="partially_funded", totals=((Decimal("0.01"), T0),))
    src.invoice("X-draft", status="draft")
    src.invoice("X-settled", status="settled")
    src.invoice("X-deleted", deleted=True, totals=((Decimal("5.00"), T0),))
    # Duplicate summaries: the latest by last_updated_at wins; equal timestamps fall to the
    # highest id, i.e. the row loaded last.
    src.invoice(
        "D-dup",
        totals=(
            (Decimal("1.00"), T0),
            (Decimal("3.00"), T0 + timedelta(days=2)),
            (Decimal("2.00"), T0 + timedelta(days=1)),
        ),
    )
    src.invoice("E-tie", totals=((Decimal("7.00"), T0), (Decimal("8.00"), T0)))
    src.invoice("F-null", totals=((None, T0),))
    src.invoice("G-null-latest", totals=((Decimal("9.00"), T0), (None, T0 + timedelta(hours=1))))
    src.invoice("H-max", totals=((Decimal("9999999999999.99"), T0),))
    src.invoice("I-negative", totals=((Decimal("-0.01"), T0),))
    # Operations: the latest completed create wins; pending, failed and other types never do.
    ops = src.invoice(
        "J-ops",
        creates=(
            ("COLD", "completed", T0),
            ("CNEW", "completed", T0 + timedelta(days=1)),
            ("CPENDING", "pending", T0 + timedelta(days=5)),
        ),
    )
    src.operation(ops, "fund", "CFUND", "completed", T0 + timedelta(days=9))
    src.invoice("K-failed-only", creates=(("CFAILED", "failed", T0),))
    src.invoice("L-null-time", creates=(("CNULLTIME", "completed", None), ("CTIMED", "completed", T0)))
    src.load(source_url)

    frame = _extract(source_url)
    assert frame.schema == INVOICES
    rows = _by_id(frame)
    assert sorted(rows) == sorted(
        [
            "A-plain",
            "B-linked",
            "C-partial",
            "D-dup",
            "E-tie",
            "F-null",
            "G-null-latest",
            "H-max",
            "I-negative",
            "J-ops",
            "K-failed-only",
            "L-null-time",
        ]
    )
    assert frame.get_column("invoice_id").to_list() == sorted(rows)  # deterministic order
    assert rows["A-plain"] | {"invoice_pk": None} == {
        "invoice_pk": None,
        "invoice_id": "A-plain",
        "tenant_id": "tenant-a",
        "status": "funded",
        "currency": "USDC",
        "db_total_funded": "1250.00",
        "total_was_null": False,
        "summary_row_count": 1,
        "op_contract_id": "CPLAIN",
        "db_total_released": None,  # the test rows leave the other sides empty
        "db_available": None,
        "db_ledger_sequence": None,
    }
    assert uuid.UUID(str(rows["A-plain"]["invoice_pk"]))
    assert (
        rows["B-linked"]["db_total_funded"],
        rows["B-linked"]["total_was_null"],
        rows["B-linked"]["summary_row_count"],
    ) == ("0", True, 0)
    assert rows["C-partial"]["db_total_funded"] == "0.01"
    assert (rows["D-dup"]["db_total_funded"], rows["D-dup"]["summary_row_count"]) == ("3.00", 3)
    assert (rows["E-tie"]["db_total_funded"], rows["E-tie"]["summary_row_count"]) == ("8.00", 2)
    assert (
        rows["F-null"]["db_total_funded"],
        rows["F-null"]["total_was_null"],
        rows["F-null"]["summary_row_count"],
    ) == ("0", True, 1)
    assert (rows["G-null-latest"]["db_total_funded"], rows["G-null-latest"]["total_was_null"]) == ("0", True)
    assert rows["H-max"]["db_total_funded"] == "9999999999999.99"
    assert rows["I-negative"]["db_total_funded"] == "-0.01"
    assert rows["J-ops"]["op_contract_id"] == "CNEW"
    assert rows["K-failed-only"]["op_contract_id"] is None
    assert rows["L-null-time"]["op_contract_id"] == "CTIMED"


def test_tenant_filter_and_hostile_strings_stay_data(source_url: str) -> None:
    src = Source()
    for index, hostile in enumerate(HOSTILE_IDS):
        src.invoice(
            hostile,
            tenant=hostile,
            currency=hostile,
            totals=((Decimal(index), T0),),
            creates=((f"C{index}", "completed", T0),),
        )
    src.invoice("plain", tenant="tenant-b")
    src.invoice("no-tenant", tenant=None)
    src.load(source_url)

    everything = _extract(source_url)
    assert sorted(everything.get_column("invoice_id").to_list()) == sorted(
        [*HOSTILE_IDS, "plain", "no-tenant"]
    )
    for index, hostile in enumerate(HOSTILE_IDS):
        only = _extract(source_url, tenant_id=hostile)
        assert only.get_column("invoice_id").to_list() == [hostile]
        assert only.row(0, named=True)["currency"] == hostile
        assert only.row(0, named=True)["db_total_funded"] == f"{index}.00"
    assert _extract(source_url, tenant_id="tenant-b").get_column("invoice_id").to_list() == ["plain"]
    # An unknown tenant is a scope error; the hostile tenant ids it lists are escaped, one line.
    with pytest.raises(ScopeError) as unknown:
        _extract(source_url, tenant_id="nobody")
    assert "tenant 'nobody' has no invoices" in str(unknown.value)
    assert "\n" not in str(unknown.value) and "\x01" not in str(unknown.value)
    with db.connect(source_url) as conn:  # the injection attempt did nothing
        assert conn.rows("SELECT count(*) FROM invoices")[0][0] == len(HOSTILE_IDS) + 2


def test_an_empty_source_is_a_scope_error_not_a_clean_audit(source_url: str) -> None:
    with pytest.raises(ScopeError, match="no invoices at all"):
        _extract(source_url)


def test_an_unknown_tenant_is_a_scope_error_naming_the_known_ones(source_url: str) -> None:
    rows = Source()
    rows.invoice("A-1", tenant="acme")
    rows.invoice("G-1", tenant="globex")
    rows.load(source_url)
    with pytest.raises(ScopeError, match=r"tenant 'ACME' has no invoices.*'acme', 'globex'"):
        _extract(source_url, tenant_id="ACME")


def test_a_known_tenant_with_nothing_in_scope_gives_an_empty_frame_of_the_schema(source_url: str) -> None:
    rows = Source()
    rows.invoice("A-1", tenant="acme", status="draft")
    rows.invoice("A-2", tenant="acme", deleted=True)
    rows.load(source_url)
    frame = _extract(source_url, tenant_id="acme")
    assert frame.height == 0
    assert frame.schema == INVOICES


@pytest.mark.parametrize(
    ("statement", "table", "column"),
    [
        ("DROP TABLE escrow_summaries", "escrow_summaries", None),
        ("DROP TABLE invoices", "invoices", None),
        ("ALTER TABLE escrow_summaries DROP COLUMN last_updated_at", "escrow_summaries", "last_updated_at"),
        ("ALTER TABLE escrow_operations DROP COLUMN completed_at", "escrow_operations", "completed_at"),
        ("ALTER TABLE invoices DROP COLUMN deleted_at", "invoices", "deleted_at"),
        (
            "ALTER TABLE escrow_summaries RENAME COLUMN total_funded TO funded_total",
            "escrow_summaries",
            "total_funded",
        ),
    ],
)
def test_schema_errors_name_table_and_column(
    source_url: str, statement: str, table: str, column: str | None
) -> None:
    with db.connect(source_url) as conn:
        conn.execute(statement)
        conn.commit()
    with pytest.raises(SourceSchemaError) as raised:
        _extract(source_url)
    assert raised.value.table == table
    assert raised.value.column == column
    assert table in str(raised.value)
    if column:
        assert f"{table}.{column}" in str(raised.value)


def _load_keep_and_other(source_url: str) -> None:
    """Two invoices for the custom queries: "keep" in a status only they select, "other" funded."""
    src = Source()
    src.invoice("keep", status="custom_status", totals=((Decimal("4.56"), T0),))
    src.invoice("other", status="funded")
    src.load(source_url)


def test_a_custom_querys_strings_and_comments_are_read_as_the_database_reads_them(
    source_url: str, tmp_path: Path
) -> None:
    """A "--" or ";" inside a string, a dollar-quoted body or a comment is text: the run, and
    `check` (which wraps the query), take the query as one statement that means what it says."""
    _load_keep_and_other(source_url)
    query = tmp_path / "quoted.sql"
    query.write_text(
        "-- the invoices a custom status marks; one statement\n"
        "SELECT CAST(invoices.id AS TEXT) AS invoice_pk, invoices.invoice_id, invoices.tenant_id,\n"
        " invoices.status, invoices.currency, CAST(4.56 AS DECIMAL(15, 2)) AS db_total_funded,\n"
        " FALSE AS total_was_null, CAST(1 AS BIGINT) AS summary_row_count, CAST(NULL AS TEXT) AS op_contract_id\n"
        "FROM invoices WHERE invoices.status <> 'a--b; c' AND invoices.status <> $$;$$ /* ; */\n"
        " AND invoices.status = 'custom_status'\n"
        " AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT)) -- the last line; a comment\n",
        encoding="utf-8",
    )
    settings = load_settings({"database_url": source_url, "extract_sql_path": str(query)}, {})
    assert "binds" in extract.check_source(settings)
    assert extract.extract_invoices(settings).get_column("invoice_id").to_list() == ["keep"]


def test_user_sql_file(source_url: str, tmp_path: Path) -> None:
    _load_keep_and_other(source_url)
    good = tmp_path / "mine.sql"
    good.write_text(
        "SELECT CAST(invoices.id AS TEXT) AS invoice_pk, invoices.invoice_id, invoices.tenant_id,"
        " invoices.status, invoices.currency,"
        " CAST(4.56 AS DECIMAL(15, 2)) AS db_total_funded, FALSE AS total_was_null,"
        " CAST(1 AS BIGINT) AS summary_row_count, CAST(NULL AS TEXT) AS op_contract_id,"
        " 'extra' AS my_extra_column"
        " FROM invoices WHERE invoices.status = 'custom_status'"
        " AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))",
        encoding="utf-8",
    )
    frame = _extract(source_url, extract_sql_path=str(good))
    assert frame.schema == INVOICES
    assert frame.get_column("invoice_id").to_list() == ["keep"]
    assert frame.get_column("db_total_funded").to_list() == ["4.56"]

    lacking = tmp_path / "lacking.sql"
    lacking.write_text(
        "SELECT CAST(invoices.id AS TEXT) AS invoice_pk, invoices.invoice_id FROM invoices", encoding="utf-8"
    )
    with pytest.raises(ExtractError) as raised:
        _extract(source_url, extract_sql_path=str(lacking))
    message = str(raised.value)
    assert str(lacking) in message
    for name in ("tenant_id", "db_total_funded", "op_contract_id"):
        assert name in message

    with pytest.raises(ExtractError, match=r"does not use \$1"):
        _extract(source_url, extract_sql_path=str(lacking), tenant_id="tenant-a")
    # "$1" in a comment or a string filters nothing: the run would audit every tenant as one.
    unfiltered = tmp_path / "unfiltered.sql"
    unfiltered.write_text(
        good.read_text().replace(
            " AND (CAST($1 AS TEXT) IS NULL OR invoices.tenant_id = CAST($1 AS TEXT))",
            "\n-- $1: the tenant\n/* $1 */ AND 'tenant $1' <> ''",
        ),
        encoding="utf-8",
    )
    assert "$1" in unfiltered.read_text() and "CAST($1" not in unfiltered.read_text()
    for stage in (extract.extract_invoices, extract.check_source):  # `check` says what the run will
        settings = load_settings(
            {"database_url": source_url, "extract_sql_path": str(unfiltered), "tenant_id": "tenant-a"}, {}
        )
        with pytest.raises(ExtractError, match=r"does not use \$1"):
            stage(settings)

    # Exact either way: an integer, or text, is taken as it is; a float never is.
    for value, text in (("CAST(456 AS BIGINT)", "456"), ("CAST('0.000000001' AS TEXT)", "0.000000001")):
        other = tmp_path / "other.sql"
        other.write_text(good.read_text().replace("CAST(4.56 AS DECIMAL(15, 2))", value), encoding="utf-8")
        assert _extract(source_url, extract_sql_path=str(other)).get_column("db_total_funded").to_list() == [
            text
        ]
    floating = tmp_path / "float.sql"
    floating.write_text(
        good.read_text().replace("CAST(4.56 AS DECIMAL(15, 2))", "CAST(4.56 AS DOUBLE PRECISION)"),
        encoding="utf-8",
    )
    with pytest.raises(ExtractError, match=r"db_total_funded as Float64.*never a float"):
        _extract(source_url, extract_sql_path=str(floating))
    # The column of earlier releases is named, with what replaced it.
    legacy = tmp_path / "legacy.sql"
    legacy.write_text(
        good.read_text().replace(
            "CAST(4.56 AS DECIMAL(15, 2)) AS db_total_funded", "CAST(456 AS BIGINT) AS db_total_funded_cents"
        ),
        encoding="utf-8",
    )
    with pytest.raises(
        ExtractError, match=r"db_total_funded_cents \(cents\) was replaced by db_total_funded"
    ):
        _extract(source_url, extract_sql_path=str(legacy))

    with pytest.raises(ExtractError, match="cannot read"):
        _extract(source_url, extract_sql_path=str(tmp_path / "absent.sql"))

    broken = tmp_path / "broken.sql"
    broken.write_text("SELEKT nonsense", encoding="utf-8")
    with pytest.raises(ExtractError, match=r"broken\.sql"):
        _extract(source_url, extract_sql_path=str(broken))

    wrong_table = tmp_path / "wrong_table.sql"
    wrong_table.write_text("SELECT * FROM invoice_table", encoding="utf-8")
    with pytest.raises(SourceSchemaError) as schema_raised:
        _extract(source_url, extract_sql_path=str(wrong_table))
    assert schema_raised.value.table == "invoice_table"


def test_unreachable_database_is_an_extract_error_without_the_password() -> None:
    url = "postgresql://postgres:hunter2-secret@127.0.0.1:1/nowhere"
    with pytest.raises(ExtractError) as raised:
        _extract(url)
    assert "hunter2-secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("message", "table", "column"),
    [
        ('ERROR:  relation "public.escrow_summaries" does not exist', "escrow_summaries", None),
        ("ERROR:  column escrow_operations.completed_at does not exist", "escrow_operations", "completed_at"),
        ('ERROR:  column "total_funded" does not exist', None, "total_funded"),
        ('ERROR:  column "x" of relation "invoices" does not exist', "invoices", "x"),
        ("Catalog Error: Table with name invoices does not exist!", "invoices", None),
        ('Binder Error: Table "invoices" does not have a column named "tenant_id"', "invoices", "tenant_id"),
        ('Binder Error: Referenced column "status" not found in FROM clause!', None, "status"),
    ],
)
def test_schema_error_parsing(message: str, table: str | None, column: str | None) -> None:
    error = extract.schema_error_from(message)
    assert error is not None
    assert (error.table, error.column) == (table, column)


def test_other_errors_are_not_schema_errors() -> None:
    assert extract.schema_error_from("ERROR:  division by zero") is None


def test_source_to_findings_end_to_end(source_url: str) -> None:
    """The stages chained over a real database: every class and flag planted through SQL rows."""
    from stellar_sdk import Keypair, StrKey

    from reconcile_audit.compute.classify import classify
    from reconcile_audit.compute.resolve import resolve_addresses
    from reconcile_audit.compute.schemas import LEDGER, count_classes

    c = [StrKey.encode_contract(bytes([i]) * 32) for i in range(1, 12)]
    bad_checksum = c[0][:-1] + ("A" if c[0][-1] != "A" else "B")
    account = Keypair.from_raw_ed25519_seed(b"\x09" * 32).public_key
    src = Source()
    src.invoice("match", totals=((Decimal("1250.00"), T0),), creates=((c[0], "completed", T0),))
    src.invoice("drift", totals=((Decimal("1250.00"), T0),), creates=((c[1], "completed", T0),))
    src.invoice(
        "dup",
        totals=((Decimal("1.00"), T0), (Decimal("2.00"), T0 + timedelta(days=1))),
        creates=((c[2], "completed", T0),),
    )
    src.invoice("nulltotal", totals=((None, T0),), creates=((c[3], "completed", T0),))
    src.invoice("mapped", totals=((Decimal("5.00"), T0),))
    src.invoice("inactive", totals=((Decimal("5.00"), T0),))
    src.invoice("gone", creates=((c[5], "completed", T0),))
    src.invoice("badsum", creates=((bad_checksum, "completed", T0),))
    src.invoice("account", creates=((account, "completed", T0),))
    src.invoice("'; DROP TABLE invoices; --", creates=((c[6], "completed", T0),))
    src.invoice("readerr", creates=((c[7], "completed", T0),))
    src.invoice("unread", creates=((c[8], "completed", T0),))
    src.invoice("otherid", creates=((c[9], "completed", T0),))
    src.invoice("deleted", deleted=True, creates=((c[10], "completed", T0),))
    src.load(source_url)
    mapping = json.dumps(
        {
            "mappings": [
                {"invoiceId": "mapped", "escrowAddress": c[4], "isActive": True},
                {"invoiceId": "inactive", "escrowAddress": c[4], "isActive": False},
            ]
        }
    )
    resolved = resolve_addresses(_extract(source_url), mapping)

    def entry(contract: str, invoice_id: str, funded: str | None = "0", **extra: object) -> dict[str, object]:
        row: dict[str, object] = {name: None for name in LEDGER}
        row.update(
            contract_id=contract,
            read_status="ok",
            escrow_invoice_id=invoice_id,
            funded_amount=funded,
            token_decimals=7,
            latest_ledger=1000,
            last_modified_ledger=900,
            live_until_ledger=10**6,
        )
        row.update(extra)
        return row

    ledger = pl.DataFrame(
        [
            entry(c[0], "match", "12500000000"),
            entry(c[1], "drift", "12499900000", live_until_ledger=500),
            entry(c[2], "dup", "20000000", live_until_ledger=1100),
            entry(c[3], "nulltotal", "0"),
            entry(c[4], "mapped", "50000000"),
            entry(c[5], "gone", None, read_status="no_instance"),
            entry(c[7], "readerr", None, read_status="error", read_error="HTTP 503 after 6 retries"),
            entry(c[9], "someone-else", "0"),
        ],
        schema=LEDGER,
    )
    findings = classify(resolved, ledger, ttl_warning_ledgers=200)
    got = {
        r["invoice_id"]: (r["class"], r["reason_code"], r["flags"]) for r in findings.iter_rows(named=True)
    }
    assert got == {
        "match": ("match", "equal", []),
        "drift": ("mismatch", "db_over_chain", ["archived"]),
        "dup": ("match", "equal", ["duplicate_summary", "ttl_expiring"]),
        "nulltotal": ("match", "equal", ["null_total"]),
        "mapped": ("match", "equal", []),
        "inactive": ("unlinked", "no_address", []),
        "gone": ("missing_on_chain", "no_instance", ["null_total"]),
        "badsum": ("error", "invalid_address", ["null_total"]),
        "account": ("error", "invalid_address", ["null_total"]),
        "'; DROP TABLE invoices; --": ("error", "invalid_invoice_id", ["null_total"]),
        "readerr": ("error", "read_error", ["null_total"]),
        "unread": ("error", "not_read", ["null_total"]),
        "otherid": ("mismatch", "invoice_id_mismatch", ["null_total"]),
    }
    drift = findings.filter(pl.col("invoice_id") == "drift").row(0, named=True)
    assert drift["reason"] == "DB 1,250.00 USDC vs chain 1,249.99 USDC (chain under by 0.01)"
    assert drift["db_total_funded"] == "1250.00"
    assert (
        findings.filter(pl.col("invoice_id") == "mapped").item(0, "address_source")
        == "escrow_addr_by_invoice"
    )
    counts = count_classes(findings)
    assert (
        counts.total,
        counts.match,
        counts.mismatch,
        counts.missing_on_chain,
        counts.unlinked,
        counts.error,
    ) == (13, 4, 2, 1, 1, 5)


def test_a_secret_in_a_driver_error_is_redacted_and_not_chained(pg_server: str) -> None:
    # PostgreSQL echoes the missing database's name; here that name is the password.
    host = pg_server.split("@", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql://postgres:Zq7secretdb@{host}/Zq7secretdb"
    with pytest.raises(ExtractError) as raised:
        _extract(url)
    assert "Zq7secretdb" not in str(raised.value)
    assert "***" in str(raised.value)
    assert raised.value.__cause__ is None


def _summary_rows(url: str) -> int:
    with db.connect(url) as conn:
        return int(conn.rows("SELECT count(*) FROM escrow_summaries")[0][0])


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("DELETE FROM escrow_summaries;\nSELECT * FROM invoices", "more than one statement"),
        ("DELETE FROM escrow_summaries", "must be one query that reads"),
        ("-- looks harmless\nUPDATE escrow_summaries SET total_funded = 0", "not 'UPDATE'"),
        ("SELECT * FROM invoices WHERE status = 'open;\nDELETE FROM escrow_summaries", "not closed"),
    ],
)
def test_a_custom_extract_that_writes_is_refused_before_the_source_is_touched(
    source_url: str, tmp_path: Path, query: str, why: str
) -> None:
    rows = Source()
    rows.invoice("A-1", totals=((Decimal("10.00"), T0),))
    rows.load(source_url)
    custom = tmp_path / "custom.sql"
    custom.write_text(query, encoding="utf-8")
    with pytest.raises(ExtractError, match=why) as refused:
        _extract(source_url, extract_sql_path=str(custom))
    assert str(custom) in str(refused.value)
    assert _summary_rows(source_url) == 1


def test_the_source_connection_cannot_write(source_url: str) -> None:
    """The second line of defence, for a query that passes the text check (a PostgreSQL
    data-modifying CTE, a function with side effects): the connection itself refuses."""
    rows = Source()
    rows.invoice("A-1", totals=((Decimal("10.00"), T0),))
    rows.load(source_url)
    with pytest.raises(Exception, match=r"(?i)read.only"), db.connect_source(source_url) as conn:
        conn.execute("DELETE FROM escrow_summaries")
    assert _summary_rows(source_url) == 1


def test_a_missing_duckdb_source_is_an_error_not_a_new_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "source.duckdb"
    with pytest.raises(ConfigError, match="DATABASE_URL: no DuckDB database file"):
        _extract(f"duckdb://{missing}")
    assert not missing.exists() and not missing.parent.exists()


def test_the_databases_other_sides_are_read_when_the_source_has_them(source_url: str) -> None:
    invoices = pl.DataFrame(
        {"id": [_pk(), _pk()], "invoice_id": ["SIDES-1", "PLAIN-1"], "status": ["funded", "funded"]}
    )
    # SIDES-1 has an older row too, whose sides must not be taken: the latest row's are.
    summaries = pl.DataFrame(
        {
            "invoice_id": [*invoices["id"], invoices["id"][0]],
            "total_funded": ["1250.00", "5.00", "1.00"],
            "total_released": ["250.00", None, "999.00"],
            "available_amount": ["1000.00", None, "1.00"],
            "stellar_ledger_sequence": ["2000123", None, "1000000"],
            "last_updated_at": [T0, T0, T0 - timedelta(days=1)],
        }
    )
    with db.connect(source_url) as conn:
        sourcedb.load_source_rows(
            conn,
            invoices,
            summaries,
            pl.DataFrame(
                {"invoice_id": [], "operation_type": [], "status": []},
                schema={"invoice_id": pl.String, "operation_type": pl.String, "status": pl.String},
            ),
        )
    rows = _by_id(_extract(source_url))
    assert (
        rows["SIDES-1"]["db_total_released"],
        rows["SIDES-1"]["db_available"],
        rows["SIDES-1"]["db_ledger_sequence"],
    ) == (
        "250.00",
        "1000.00",
        2_000_123,
    )
    assert rows["PLAIN-1"]["db_ledger_sequence"] is None
    # A source without those columns is read as before, the sides left empty.
    with db.connect(source_url) as conn:
        for column in ("total_released", "available_amount", "stellar_ledger_sequence"):
            conn.execute(f"ALTER TABLE escrow_summaries DROP COLUMN {column}")
        conn.commit()
    rows = _by_id(_extract(source_url))
    assert rows["SIDES-1"]["db_total_released"] is None and rows["SIDES-1"]["db_total_funded"] == "1250.00"


def test_escrow_candidates_cover_every_escrow_the_ledger_stage_reads(source_url: str, tmp_path: Path) -> None:
    src = Source()
    src.invoice("A", creates=((" CA ", "completed", T0),))  # trimmed as resolve trims it
    src.invoice("B", creates=(("COLD", "completed", T0), ("CNEW", "completed", T0 + timedelta(days=1))))
    src.invoice("C", creates=(("CPENDING", "pending", T0), ("CFAILED", "failed", T0)))
    src.operation(src.invoice("D"), "fund", "CFUND", "completed", T0)
    src.invoice("E-deleted", deleted=True, creates=(("CDELETED", "completed", T0),))  # stranded check
    src.invoice("F-other", tenant="tenant-b", creates=(("COTHER", "completed", T0),))
    src.load(source_url)

    def candidates(**params: object) -> list[str] | None:
        named = extract.escrow_candidates(load_settings({"database_url": source_url, **params}, {}))
        return None if named is None else named.to_list()

    every = candidates()
    assert every is not None and sorted(every) == ["CA", "CDELETED", "CNEW", "COLD", "COTHER"]
    settings = load_settings({"database_url": source_url}, {})
    read = resolve.contract_ids_to_read(
        resolve.resolve_addresses(extract.extract_invoices(settings), None),
        extract.extract_out_of_scope(settings),
    )
    assert set(read.to_list()) <= set(every)  # COLD is read early for nothing: the ledger stage leaves it out
    assert sorted(candidates(tenant_id="tenant-b") or []) == ["COTHER"]
    shards = [candidates(shard=f"{index}/3") or [] for index in range(3)]
    assert sorted(c for shard in shards for c in shard) == sorted(every) and all(
        len(s) < len(every) for s in shards
    )
    custom = tmp_path / "mine.sql"
    custom.write_text("SELECT 1")
    assert candidates(extract_sql_path=str(custom)) is None  # its scope only it knows
