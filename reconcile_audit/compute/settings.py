"""One settings object, built from parameters and the environment.

Parameters (papermill, CLI flags, keyword arguments) override the environment. Secrets (the
database password inside a URL, the SMTP password) come from the environment only: papermill
writes parameters into the executed notebook, so a secret must never be one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from email.utils import formataddr, getaddresses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from reconcile_audit.compute.strkey import is_valid_contract
from reconcile_audit.errors import ConfigError

TESTNET_PASSPHRASE = "Test SDF Network ; September 2015"
PUBLIC_PASSPHRASE = "Public Global Stellar Network ; September 2015"
REDACTED = "***"


class Secret:
    """A string that never shows itself in repr, str or f-strings. Call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def url_password(url: str) -> str | None:
    """The password embedded in a database URL, if any: in its userinfo, or libpq's
    ``?password=`` query parameter."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.password:
        return parts.password
    return next((value for name, value in parse_qsl(parts.query) if name == "password" and value), None)


def url_credentials(url: str) -> list[str]:
    """The password and every query-string value of ``url``: the places API keys hide."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found.extend(value for _, value in parse_qsl(parts.query) if len(value) >= 4)
    return found


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    password = url_password(url)
    return url if password is None else url.replace(password, REDACTED)


def public_url(url: str) -> str:
    """``scheme://host[:port]``: how an RPC or gateway URL is shown anywhere. Providers put API
    keys in the path (``/v1/<key>/``), the query or the userinfo, so none of those is shown."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _hidden_url_parts(url: str) -> list[str]:
    """What :func:`public_url` leaves out of ``url``, as strings to redact wherever they appear."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    hidden = url_credentials(url)
    if parts.path.strip("/"):
        hidden.append(parts.path.rstrip("/"))
    if parts.query:
        hidden.append(parts.query)
    return hidden


_SHARD_TEXT: Final = re.compile(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*")


@dataclass(frozen=True)
class Shard:
    """One of ``count`` disjoint parts of a run's invoices: those whose id hashes to ``index``
    (0-based, as Kubernetes' ``JOB_COMPLETION_INDEX``). The hash is CRC-32 of the id's UTF-8
    bytes, modulo ``count``: fixed by this definition, not by a library's version, so shards run
    by different hosts or releases still split the invoices the same way. A missing id is in
    shard 0, so every extracted invoice is in exactly one shard."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"shard {self.index}/{self.count}: the index must be 0 to count - 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"``, as ``run --shard`` and ``RECONCILE_SHARD`` take it."""
        match = _SHARD_TEXT.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not I/N (for example 0/4)")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """For keys and file names: ``shard-2-of-4``."""
        return f"shard-{self.index}-of-{self.count}"

    def key_of(self, run_key: str) -> str:
        """The stored key of this shard's result within ``run_key``."""
        return f"{run_key}#{self.label}"


@dataclass(frozen=True)
class Settings:
    """Everything a run needs. Built by :func:`load_settings`; immutable afterwards.

    ``database_url``: the source database, ``postgresql://...`` or ``duckdb:///path``.
    ``state_database_url``: where the tool keeps ``reconciliation_runs`` and its findings;
    defaults to the source database (the backend's health check reads it there).
    """

    database_url: Secret | None
    state_database_url: Secret | None
    rpc_url: str | None = None
    network_passphrase: str = TESTNET_PASSPHRASE
    tenant_id: str | None = None
    extract_sql_path: Path | None = None
    escrow_addr_by_invoice: str | None = None
    tolerance_base_units: int = 0
    ttl_warning_ledgers: int = 17_280 * 7  # about a week of 5-second ledgers
    token_decimals: Mapping[str, int] = field(default_factory=dict)
    # Upper-case invoice currency -> the token contract its escrows must hold; None: not checked.
    currency_tokens: Mapping[str, str] | None = None
    # Wasm hashes of the escrow code that holds the tokens; None: custody is told by ProtocolFeeBps.
    custodial_wasm_hashes: frozenset[bytes] | None = None
    rpc_batch_size: int = 200
    # Requests in flight, at most: enough to hide a remote RPC's round trip (benchmarks/README.md);
    # the client halves it whenever the RPC answers 429.
    rpc_concurrency: int = 16
    rpc_max_retries: int = 6
    rpc_timeout_seconds: float = 30.0
    rpc_use_simulate: bool = False
    # Start the sweep before the extract, on the escrows a narrow query names (ledger.EarlySweep).
    rpc_early_sweep: bool = True
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: Secret | None = None
    smtp_starttls: bool = True
    alert_email_to: tuple[str, ...] = ()  # "Name <addr>" or "addr", as getaddresses parsed them
    alert_email_from: str = "reconcile-audit@localhost"
    email_max_attachment_bytes: int = 5_000_000
    # Findings that need a person, itemised on the email's first screen; the rest are one line.
    email_max_new: int = 200
    # Tenant -> its finance team's recipients: each gets a report of its own tenant only.
    tenant_recipients: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Unacknowledged findings open longer than this many days are overdue.
    finding_sla_days: int = 7
    explain_max: int = 500  # findings explained per run, worst first (0: none)
    # Run folders `reconcile-audit run` keeps in its output directory; the latest completed one is
    # kept whatever its age.
    keep_runs: int = 30
    report_base_url: str | None = None  # where run folders are published, for absolute links
    pushgateway_url: str | None = None
    metrics_textfile_dir: Path | None = None
    stale_after_hours: float = 25.0
    min_read_share: float = 0.99  # below this share of escrows read, the run is incomplete
    run_key: str | None = None
    shard: Shard | None = None  # this run reconciles one shard of the invoices; None: all of them

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = redact_url(value.reveal()) if "url" in f.name else REDACTED
            shown.append(f"{f.name}={value!r}")
        return self.redact(f"Settings({', '.join(shown)})")

    __str__ = __repr__

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret string, for redaction and for tests that search artifacts."""
        found = []
        for secret in (self.database_url, self.state_database_url):
            password = None if secret is None else url_password(secret.reveal())
            if password:
                found.append(password)
        # RPC providers and gateways carry API keys in the URL's userinfo, query or path.
        for url in (self.rpc_url, self.pushgateway_url):
            if url:
                found.extend(_hidden_url_parts(url))
        if self.smtp_password:
            found.append(self.smtp_password.reveal())
        # Longest first, so that redacting a part never leaves the rest of a longer secret behind.
        return tuple(sorted(set(found), key=len, reverse=True))

    def source_url(self) -> str:
        """The source database's URL; :class:`ConfigError` naming ``DATABASE_URL`` when unset.

        Never a demo database in its place: synthetic data audited and stored as a real run is
        worse than no audit (``reconcile-audit demo`` is the way to run on demo data).
        """
        if self.database_url is None:
            raise ConfigError(
                "DATABASE_URL",
                "not set: the source database to audit (postgresql://user@host/db or duckdb:///path); "
                "`reconcile-audit demo` runs on synthetic data instead",
            )
        return self.database_url.reveal()

    def state_url(self) -> str:
        """Where runs and findings are kept; :class:`ConfigError` when neither URL is set."""
        if self.state_database_url is None:
            raise ConfigError(
                "RECONCILE_STATE_DATABASE_URL",
                "not set, and DATABASE_URL neither: no state database holds the runs",
            )
        return self.state_database_url.reveal()

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _env_bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _json_setting(raw: str | Mapping[str, Any], variable: str, expected: str) -> Any:
    """A JSON setting's value (a parameter may pass the mapping itself); ConfigError naming
    ``variable`` when it is not JSON."""
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(variable, f"not JSON ({exc.msg}); {expected}") from exc


def _parse_token_decimals(raw: str | Mapping[str, int] | None) -> dict[str, int]:
    if raw is None or raw == "":
        return {}
    parsed = _json_setting(raw, "RECONCILE_TOKEN_DECIMALS", 'expected {"C...": 7}')
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 38
        for k, v in parsed.items()
    ):
        raise ConfigError(
            "RECONCILE_TOKEN_DECIMALS", "expected a JSON object of token address -> integer 0..38"
        )
    return parsed


CURRENCY_TOKENS_SETTING: Final = "RECONCILE_CURRENCY_TOKENS"


def _parse_currency_tokens(raw: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``{"USD": "C..."}`` with currencies upper-cased and every token a valid contract address."""
    if raw is None or raw == "":
        return None
    expected = 'expected a JSON object of invoice currency -> token contract address, e.g. {"USD": "C..."}'
    parsed = _json_setting(raw, CURRENCY_TOKENS_SETTING, expected)
    if not isinstance(parsed, dict) or not parsed:
        raise ConfigError(CURRENCY_TOKENS_SETTING, expected)
    tokens: dict[str, str] = {}
    for currency, token in parsed.items():
        name = str(currency).strip().upper()
        if not name or not isinstance(token, str) or not is_valid_contract(token.strip()):
            raise ConfigError(
                CURRENCY_TOKENS_SETTING,
                f"{str(currency)[:20]!r} -> {str(token)[:60]!r} is not a currency and a C... "
                "contract address",
            )
        if name in tokens:
            raise ConfigError(CURRENCY_TOKENS_SETTING, f"currency {name!r} is listed twice")
        tokens[name] = token.strip()
    return tokens


def _parse_wasm_hashes(raw: str | None) -> frozenset[bytes] | None:
    """``RECONCILE_CUSTODIAL_WASM_HASHES``: 64-hex-digit Wasm hashes, separated by commas or spaces."""
    if raw is None or not str(raw).strip():
        return None
    hashes = set()
    for item in re.split(r"[,\s]+", str(raw).strip()):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", item):
            raise ConfigError(
                "RECONCILE_CUSTODIAL_WASM_HASHES", f"{item[:70]!r} is not a 64-digit hex Wasm hash"
            )
        hashes.add(bytes.fromhex(item))
    return frozenset(hashes)


def _parse_tenant_recipients(raw: str | Mapping[str, Any] | None) -> Mapping[str, tuple[str, ...]]:
    """``RECONCILE_TENANT_RECIPIENTS``: JSON ``{"acme": "finance@acme.example, cfo@acme.example"}``
    (a value may also be a list of addresses)."""
    setting = ENVIRONMENT["tenant_recipients"]
    if raw is None:
        return MappingProxyType({})
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ConfigError(setting, f"not JSON: {exc}") from exc
    if not isinstance(parsed, Mapping):
        raise ConfigError(setting, 'expected a JSON object {"tenant": "address, ..."}')
    recipients: dict[str, tuple[str, ...]] = {}
    for tenant, addresses in parsed.items():
        if not isinstance(addresses, str | list) or not tenant:
            raise ConfigError(setting, f"tenant {str(tenant)[:40]!r}: expected an address string or a list")
        recipients[str(tenant)] = _recipients(addresses, setting=setting)
        if not recipients[str(tenant)]:
            raise ConfigError(setting, f"tenant {str(tenant)[:40]!r} has no address")
    return MappingProxyType(recipients)


def _recipients(
    raw: str | tuple[str, ...] | list[str] | None, *, setting: str = "ALERT_EMAIL_TO"
) -> tuple[str, ...]:
    """``ALERT_EMAIL_TO`` as mail clients read it: ``Finance Team <finance@example.test>, ops@x``
    is two recipients, display names kept. Each must carry an address with a domain."""
    if raw is None:
        return ()
    fields = [raw] if isinstance(raw, str) else list(raw)
    recipients = []
    for name, address in getaddresses(fields):
        if not name and not address:
            continue
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            shown = formataddr((name, address)) if name else address
            raise ConfigError(setting, f"{shown[:80]!r} is not an email address")
        recipients.append(formataddr((name, address)) if name else address)
    return tuple(recipients)


def envelope_addresses(recipients: tuple[str, ...]) -> list[str]:
    """The bare addresses of :func:`_recipients`' output, for the SMTP envelope."""
    return [address for _, address in getaddresses(list(recipients))]


# Parameter name -> environment variable. The backend's names where they exist (docs/domain.md, "Interfaces users rely on").
ENVIRONMENT = {
    "database_url": "DATABASE_URL",
    "state_database_url": "RECONCILE_STATE_DATABASE_URL",
    "rpc_url": "SOROBAN_RPC_URL",
    "network_passphrase": "STELLAR_NETWORK_PASSPHRASE",
    "tenant_id": "RECONCILE_TENANT_ID",
    "extract_sql_path": "RECONCILE_EXTRACT_SQL",
    "escrow_addr_by_invoice": "ESCROW_ADDR_BY_INVOICE",
    "tolerance_base_units": "RECONCILE_TOLERANCE_BASE_UNITS",
    "ttl_warning_ledgers": "RECONCILE_TTL_WARNING_LEDGERS",
    "token_decimals": "RECONCILE_TOKEN_DECIMALS",
    "currency_tokens": CURRENCY_TOKENS_SETTING,
    "custodial_wasm_hashes": "RECONCILE_CUSTODIAL_WASM_HASHES",
    "rpc_batch_size": "RECONCILE_RPC_BATCH_SIZE",
    "rpc_concurrency": "RECONCILE_RPC_CONCURRENCY",
    "rpc_max_retries": "RECONCILE_RPC_MAX_RETRIES",
    "rpc_timeout_seconds": "RECONCILE_RPC_TIMEOUT_SECONDS",
    "rpc_use_simulate": "RECONCILE_RPC_USE_SIMULATE",
    "rpc_early_sweep": "RECONCILE_RPC_EARLY_SWEEP",
    "smtp_host": "SMTP_HOST",
    "smtp_port": "SMTP_PORT",
    "smtp_user": "SMTP_USER",
    "smtp_password": "SMTP_PASSWORD",
    "smtp_starttls": "SMTP_STARTTLS",
    "alert_email_to": "ALERT_EMAIL_TO",
    "alert_email_from": "ALERT_EMAIL_FROM",
    "email_max_attachment_bytes": "RECONCILE_EMAIL_MAX_ATTACHMENT_BYTES",
    "email_max_new": "RECONCILE_EMAIL_MAX_NEW",
    "tenant_recipients": "RECONCILE_TENANT_RECIPIENTS",
    "finding_sla_days": "RECONCILE_FINDING_SLA_DAYS",
    "explain_max": "RECONCILE_EXPLAIN_MAX",
    "keep_runs": "RECONCILE_KEEP_RUNS",
    "report_base_url": "RECONCILE_REPORT_BASE_URL",
    "pushgateway_url": "PUSHGATEWAY_URL",
    "metrics_textfile_dir": "RECONCILE_METRICS_TEXTFILE_DIR",
    "stale_after_hours": "RECONCILE_STALE_AFTER_HOURS",
    "min_read_share": "RECONCILE_MIN_READ_SHARE",
    "run_key": "RECONCILE_RUN_KEY",
    "shard": "RECONCILE_SHARD",
}
SECRET_ONLY_FROM_ENV = frozenset({"smtp_password"})


def load_settings(
    params: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from ``params`` (None or "" means "not given") over ``environ``.

    Raises :class:`ConfigError` naming the parameter for unknown names, secrets passed as
    parameters, and malformed values.
    """
    params = dict(params or {})
    environ = os.environ if environ is None else environ
    unknown = set(params) - set(ENVIRONMENT)
    if unknown:
        raise ConfigError(", ".join(sorted(unknown)), f"unknown parameter; known: {sorted(ENVIRONMENT)}")
    for name in SECRET_ONLY_FROM_ENV & set(params):
        if params[name] not in (None, ""):
            raise ConfigError(name, f"secrets come from the environment only; set {ENVIRONMENT[name]}")

    raw: dict[str, Any] = {}
    for name, variable in ENVIRONMENT.items():
        value = params.get(name)
        if value is None or value == "":
            value = environ.get(variable)
        if value is not None and value != "":
            raw[name] = value

    database_url = raw.get("database_url")
    state_database_url = raw.get("state_database_url", database_url)
    for variable, url in (
        ("DATABASE_URL", database_url),
        ("RECONCILE_STATE_DATABASE_URL", state_database_url),
    ):
        if url is not None and not str(url).startswith(("postgresql://", "postgres://", "duckdb://")):
            raise ConfigError(variable, "expected postgresql://... or duckdb:///path")
    values: dict[str, Any] = {
        "database_url": None if database_url is None else Secret(str(database_url)),
        "state_database_url": None if state_database_url is None else Secret(str(state_database_url)),
        "token_decimals": _parse_token_decimals(raw.get("token_decimals")),
        "currency_tokens": _parse_currency_tokens(raw.get("currency_tokens")),
        "custodial_wasm_hashes": _parse_wasm_hashes(raw.get("custodial_wasm_hashes")),
        "alert_email_to": _recipients(raw.get("alert_email_to")),
        "tenant_recipients": _parse_tenant_recipients(raw.get("tenant_recipients")),
    }
    if "smtp_password" in raw:
        values["smtp_password"] = Secret(str(raw["smtp_password"]))
    converters: dict[str, Any] = {
        "tolerance_base_units": int,
        "ttl_warning_ledgers": int,
        "rpc_batch_size": int,
        "rpc_concurrency": int,
        "rpc_max_retries": int,
        "rpc_timeout_seconds": float,
        "smtp_port": int,
        "email_max_attachment_bytes": int,
        "email_max_new": int,
        "finding_sla_days": int,
        "explain_max": int,
        "keep_runs": int,
        "stale_after_hours": float,
        "min_read_share": float,
        "rpc_use_simulate": lambda v: v if isinstance(v, bool) else _env_bool(str(v)),
        "rpc_early_sweep": lambda v: v if isinstance(v, bool) else _env_bool(str(v)),
        "smtp_starttls": lambda v: v if isinstance(v, bool) else _env_bool(str(v)),
        "extract_sql_path": Path,
        "metrics_textfile_dir": Path,
        "shard": lambda v: v if isinstance(v, Shard) else Shard.parse(str(v)),
    }
    for name in ENVIRONMENT:
        if name in values or name not in raw:
            continue
        convert = converters.get(name, str)
        try:
            values[name] = convert(raw[name])
        except (TypeError, ValueError) as exc:
            raise ConfigError(ENVIRONMENT[name], f"cannot read {raw[name]!r}: {exc}") from exc
    settings = Settings(**values)
    for name, valid, rule in _RULES:
        if not valid(getattr(settings, name)):
            # Both spellings: the variable an operator sets, the parameter an analyst passes.
            raise ConfigError(
                f"{ENVIRONMENT[name]} ({name})", f"{rule}, not {str(getattr(settings, name))[:60]!r}"
            )
    return settings


# Out-of-range values would silently change behaviour (a timeout of 0 disables the timeout).
_RULES: Final = (
    ("rpc_batch_size", lambda v: 1 <= v <= 200, "getLedgerEntries takes 1 to 200 keys"),
    ("rpc_concurrency", lambda v: v >= 1, "must be at least 1"),
    ("rpc_max_retries", lambda v: v >= 0, "must not be negative"),
    ("rpc_timeout_seconds", lambda v: v > 0, "must be more than 0 seconds"),
    ("smtp_port", lambda v: 1 <= v <= 65535, "must be a TCP port, 1 to 65535"),
    ("stale_after_hours", lambda v: v > 0, "must be more than 0 hours"),
    ("ttl_warning_ledgers", lambda v: v >= 0, "must not be negative"),
    ("min_read_share", lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1"),
    ("tolerance_base_units", lambda v: v >= 0, "must not be negative"),
    ("email_max_attachment_bytes", lambda v: v >= 0, "must not be negative (0 attaches nothing)"),
    ("keep_runs", lambda v: v >= 1, "must be at least 1"),
    ("email_max_new", lambda v: v >= 0, "must not be negative"),
    ("finding_sla_days", lambda v: v >= 0, "must not be negative"),
    ("explain_max", lambda v: v >= 0, "must not be negative"),
    (
        "report_base_url",
        lambda v: (
            v is None
            or (
                urlsplit(v).scheme in ("http", "https")
                and urlsplit(v).netloc
                and "@" not in urlsplit(v).netloc
            )
        ),
        "must be an http(s) URL without credentials, as it is written into every email",
    ),
    # The backend's ids are at most 128 characters, and the scope keys indexed rows.
    ("tenant_id", lambda v: v is None or len(v) <= 128, "must be at most 128 characters"),
)


class RedactingFilter(logging.Filter):
    """Replaces every secret in a log record's rendered message with ``***``."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            for secret in self._secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        return True


def install_redaction(settings: Settings, logger: logging.Logger | None = None) -> None:
    """Attach a :class:`RedactingFilter` to every handler of ``logger`` (default: root)."""
    target = logger or logging.getLogger()
    redactor = RedactingFilter(settings.secrets)
    for handler in target.handlers:
        handler.addFilter(redactor)
    target.addFilter(redactor)
