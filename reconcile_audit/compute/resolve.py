"""Resolve: each invoice's escrow contract address, validated; ``INVOICES`` -> ``RESOLVED``.

Precedence: the latest completed ``create`` row of ``escrow_operations`` (``op_contract_id``)
wins whenever it is present; the backend's ``ESCROW_ADDR_BY_INVOICE`` mapping fills in only
for invoices without one. The database records what was deployed; the mapping is
configuration, which can go stale. When both exist and differ, the operations address
is still used and the mapping's address goes into the extra column ``address_conflict`` (null
otherwise), which classify mentions in the reason sentence.

Addresses are trimmed; an empty one counts as absent. A present address that is not a valid
contract strkey (``C...``, 56 characters, checksum) gets a human reason in ``address_error``;
the verdict is always stellar-sdk's ``StrKey.is_valid_contract``. Invoice ids are checked against the
backend's rule ``^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`` into ``invoice_id_error``.

Validation is vectorised in polars except the checksum, checked once per distinct well-formed
address by :func:`reconcile_audit.compute.strkey.is_valid_contract`, the project's one strkey
checker (the ledger reader decodes with the same code).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from reconcile_audit.compute.schemas import INVOICES, RESOLVED, chunked_like, compacted, conform
from reconcile_audit.compute.strkey import STRKEY_LENGTH, is_valid_contract
from reconcile_audit.errors import ConfigError

if TYPE_CHECKING:
    from reconcile_audit.compute.extract import OutOfScope

INVOICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
ESCROW_ADDR_BY_INVOICE: Final = "ESCROW_ADDR_BY_INVOICE"
SOURCE_OPERATIONS: Final = "escrow_operations"
SOURCE_MAPPING: Final = "escrow_addr_by_invoice"
# What a strkey's first letter says it is (stellar-sdk's version bytes).
_STRKEY_KINDS: Final = {
    "G": "an account address (G...)",
    "M": "a muxed account address (M...)",
    "S": "a secret seed (S...)",
    "T": "a pre-authorized transaction hash (T...)",
    "X": "a hash-x signer (X...)",
    "P": "a signed-payload signer (P...)",
    "B": "a claimable balance id (B...)",
    "L": "a liquidity pool id (L...)",
}


def parse_escrow_addr_by_invoice(raw: str | None) -> dict[str, str]:
    """Active mappings of the backend's JSON as ``{invoiceId: escrowAddress}``.

    Shape: ``{"mappings": [{"invoiceId": str, "escrowAddress": str, "isActive": bool}]}``.
    ``isActive`` defaults to true when absent; inactive entries are ignored. Anything else, or
    two active entries giving one invoice different addresses, raises :class:`ConfigError`
    naming ``ESCROW_ADDR_BY_INVOICE``.
    """
    if raw is None or not raw.strip():
        return {}
    try:
        document: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            ESCROW_ADDR_BY_INVOICE, f"not valid JSON ({exc.msg} at position {exc.pos})"
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("mappings"), list):
        raise ConfigError(ESCROW_ADDR_BY_INVOICE, 'expected an object {"mappings": [...]}')
    active: dict[str, str] = {}
    for index, entry in enumerate(document["mappings"]):
        where = f"mappings[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(ESCROW_ADDR_BY_INVOICE, f"{where} is not an object")
        invoice_id, address = entry.get("invoiceId"), entry.get("escrowAddress")
        is_active = entry.get("isActive", True)
        if not isinstance(invoice_id, str) or not isinstance(address, str):
            raise ConfigError(ESCROW_ADDR_BY_INVOICE, f"{where} needs string invoiceId and escrowAddress")
        if not isinstance(is_active, bool):
            raise ConfigError(ESCROW_ADDR_BY_INVOICE, f"{where}.isActive must be true or false")
        if not is_active:
            continue
        address = address.strip()
        if active.get(invoice_id, address) != address:
            raise ConfigError(
                ESCROW_ADDR_BY_INVOICE,
                f"invoice {invoice_id!r} has two active mappings: {active[invoice_id]} and {address}",
            )
        active[invoice_id] = address
    return active


def contract_address_error(address: str) -> str | None:
    """Why ``address`` is not a valid contract strkey, in words; None when it is valid."""
    errors = _address_errors(pl.Series([address], dtype=pl.String))
    return errors.item(0, "address_error") if errors.height else None


def _address_problems(addresses: pl.Series) -> pl.Series:
    """Shape problems of each address (prefix, length, alphabet); null when well formed."""
    frame = pl.DataFrame({"a": addresses})
    first = pl.col("a").str.slice(0, 1)
    kind = first.replace_strict(_STRKEY_KINDS, default=None, return_dtype=pl.String)
    length = pl.col("a").str.len_chars()
    problem = (
        pl.when(pl.col("a").str.contains(r"[^A-Z2-7]"))
        .then(
            pl.lit("contains characters outside the strkey alphabet (A-Z and 2-7")
            + pl.when(pl.col("a").str.contains(r"[a-z]"))
            .then(pl.lit(", upper case only"))
            .otherwise(pl.lit(""))
            + pl.lit(")")
        )
        .when((first != "C") & kind.is_not_null())
        .then(pl.lit("not a contract address: it is ") + kind + pl.lit("; a contract id starts with C"))
        .when(first != "C")
        .then(pl.lit("wrong prefix '") + first + pl.lit("': a contract id starts with C"))
        .when(length != STRKEY_LENGTH)
        .then(
            pl.lit("wrong length: ")
            + length.cast(pl.String)
            + pl.lit(f" characters, a contract id has {STRKEY_LENGTH}")
        )
        .otherwise(None)
    )
    return frame.select(problem.alias("problem")).get_column("problem")


def _address_errors(addresses: pl.Series) -> pl.DataFrame:
    """``contract_id`` -> ``address_error`` for each distinct non-null address that is not valid."""
    distinct = addresses.drop_nulls().unique()
    problems = _address_problems(distinct)
    errors: list[str | None] = []
    # A slice at a time: the Python strings of 1M addresses at once were 0.1 GB of the stage's peak.
    for start in range(0, distinct.len(), _CHECKED_AT_ONCE):
        part = zip(
            distinct.slice(start, _CHECKED_AT_ONCE).to_list(),
            problems.slice(start, _CHECKED_AT_ONCE).to_list(),
            strict=True,
        )
        errors += [
            problem if problem is not None else (None if is_valid_contract(address) else "bad checksum")
            for address, problem in part
        ]
    return pl.DataFrame(
        {"contract_id": distinct, "address_error": errors},
        schema={"contract_id": pl.String, "address_error": pl.String},
    ).drop_nulls("address_error")


_CHECKED_AT_ONCE: Final = 100_000


def _invoice_id_error() -> pl.Expr:
    invoice_id = pl.col("invoice_id")
    return (
        pl.when(invoice_id.is_null() | (invoice_id == ""))
        .then(pl.lit("invoice id is empty"))
        .when(invoice_id.str.contains(INVOICE_ID_PATTERN))
        .then(None)
        .when(invoice_id.str.len_chars() > 128)
        .then(pl.lit("invoice id is longer than 128 characters"))
        .when(~invoice_id.str.contains(r"^[A-Za-z0-9]"))
        .then(pl.lit("invoice id must start with a letter or digit"))
        .otherwise(pl.lit("invoice id may only contain letters, digits and . _ : -"))
    )


def resolve_addresses(invoices: pl.DataFrame, escrow_addr_by_invoice: str | None) -> pl.DataFrame:
    """``invoices`` (``INVOICES``) with each one's contract address chosen and validated.

    Returns ``RESOLVED`` plus the extra column ``address_conflict`` (see the module docstring).
    Row order and count are those of ``invoices``. Raises :class:`ConfigError` only for a
    malformed ``escrow_addr_by_invoice``; bad addresses and ids become data.
    """
    mapping = parse_escrow_addr_by_invoice(escrow_addr_by_invoice)
    base = conform(invoices, INVOICES, "resolve").select(list(INVOICES))
    # Only the new columns are computed, and set beside the invoices' own: a join and sort of
    # every column copied each of them twice (0.5 GB over the stage's start at 1M invoices).
    op_address = _without_empty(_trimmed(base.get_column("op_contract_id")))
    if mapping:
        mapping_frame = pl.DataFrame(
            {"invoice_id": list(mapping), "_mapped": list(mapping.values())},
            schema={"invoice_id": pl.String, "_mapped": pl.String},
        )
        mapped = (  # ids are unique on the right: the left's rows are neither lost nor repeated
            base.select("invoice_id")
            .join(mapping_frame, on="invoice_id", how="left", maintain_order="left")
            .get_column("_mapped")
        )
        mapped = _without_empty(mapped)
    else:
        mapped = pl.repeat(None, base.height, dtype=pl.String, eager=True)
    chosen = pl.DataFrame({"_op": op_address, "_mapped": mapped}).select(
        pl.coalesce("_op", "_mapped").alias("contract_id"),
        pl.when(pl.col("_op").is_not_null())
        .then(pl.lit(SOURCE_OPERATIONS))
        .when(pl.col("_mapped").is_not_null())
        .then(pl.lit(SOURCE_MAPPING))
        .alias("address_source"),
        pl.when(
            pl.col("_op").is_not_null()
            & pl.col("_mapped").is_not_null()
            & (pl.col("_op") != pl.col("_mapped"))
        )
        .then(pl.col("_mapped"))
        .alias("address_conflict"),
    )
    # Without a mapping, the operations' address is the one used: op_contract_id's own column
    # when no address needed trimming (at 1M invoices, one 72 MB copy fewer in every frame).
    contract_id = (chosen.get_column("contract_id") if mapping else op_address).alias("contract_id")
    errors = _address_errors(contract_id)  # few rows: a map of every address took 0.24 GB at 1M
    address_error = contract_id.replace_strict(
        errors.get_column("contract_id"),
        errors.get_column("address_error"),
        default=None,
        return_dtype=pl.String,
    ).alias("address_error")
    invoice_id_error = base.select(_invoice_id_error().alias("invoice_id_error")).to_series()
    added = [
        contract_id,
        chosen.get_column("address_source"),
        address_error,
        invoice_id_error,
        chosen.get_column("address_conflict"),
    ]
    resolved = conform(base.with_columns(chunked_like(column, base) for column in added), RESOLVED, "resolve")
    return compacted(resolved, ("address_source",))


def _trimmed(addresses: pl.Series) -> pl.Series:
    """``addresses`` with surrounding whitespace cut: the column itself when none has any."""
    stripped = addresses.str.strip_chars()
    return addresses if stripped.equals(addresses) else stripped


def _without_empty(addresses: pl.Series) -> pl.Series:
    """``addresses`` with an empty one as null (absent): the column itself when none is empty."""
    empty = addresses == ""
    return addresses.set(empty, None) if empty.any() else addresses


def contract_ids_to_read(resolved: pl.DataFrame, out_of_scope: OutOfScope | None = None) -> pl.Series:
    """What the ledger stage reads: the valid contract ids of the RESOLVED frame, then those of
    the invoices outside the audit (read in the same sweep for the stranded check; the reader
    makes an invalid one an error row, which the check reports as unread). Repeats are left in:
    ``read_ledger`` reads each id once (``ledger.distinct_ids``), the one place that drops them.
    A column: as Python strings, 1M ids were 0.12 GB held through the ledger stage."""
    valid = resolved.filter(pl.col("contract_id").is_not_null() & pl.col("address_error").is_null())
    ids = valid.get_column("contract_id")
    if out_of_scope is not None:
        escrows = out_of_scope.invoices.select(out_of_scope_address()).get_column("contract_id")
        ids = pl.concat([ids, escrows.drop_nulls()])
    return ids


def out_of_scope_address() -> pl.Expr:
    """An OUT_OF_SCOPE row's escrow address as the stranded check reads it: trimmed, null when empty."""
    address = pl.col("op_contract_id").str.strip_chars()
    return pl.when(address != "").then(address).alias("contract_id")
