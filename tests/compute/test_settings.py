import json
import logging

import pytest
from stellar_sdk import StrKey

from reconcile_audit.compute.settings import RedactingFilter, load_settings
from reconcile_audit.errors import ConfigError


def test_secrets_never_in_repr():
    settings = load_settings(
        {"rpc_url": "http://127.0.0.1:8000"},
        {"DATABASE_URL": "postgresql://app:hunter2@db/x", "SMTP_PASSWORD": "s3cret-smtp"},
    )
    text = repr(settings) + str(settings)
    assert "hunter2" not in text and "s3cret-smtp" not in text
    assert settings.database_url.reveal() == "postgresql://app:hunter2@db/x"
    assert set(settings.secrets) == {"hunter2", "s3cret-smtp"}
    assert settings.redact("dsn=postgresql://app:hunter2@db/x") == "dsn=postgresql://app:***@db/x"


def test_parameters_override_environment_and_no_database_is_never_a_demo_database():
    settings = load_settings({"tenant_id": "t1"}, {"RECONCILE_TENANT_ID": "t2"})
    assert settings.tenant_id == "t1"
    assert settings.database_url is None and settings.state_database_url is None
    with pytest.raises(ConfigError, match="DATABASE_URL: not set"):
        settings.source_url()
    with pytest.raises(ConfigError, match="RECONCILE_STATE_DATABASE_URL: not set"):
        settings.state_url()
    state_only = load_settings({}, {"RECONCILE_STATE_DATABASE_URL": "duckdb:///state.duckdb"})
    assert state_only.state_url() == "duckdb:///state.duckdb"


def test_secret_as_parameter_is_refused():
    with pytest.raises(ConfigError, match="SMTP_PASSWORD"):
        load_settings({"smtp_password": "x"}, {})


def test_unknown_parameter_and_bad_values():
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_settings({"nope": 1}, {})
    with pytest.raises(ConfigError, match="RECONCILE_TOLERANCE_BASE_UNITS"):
        load_settings({}, {"RECONCILE_TOLERANCE_BASE_UNITS": "ten"})
    with pytest.raises(ConfigError, match="rpc_batch_size"):
        load_settings({"rpc_batch_size": 201}, {})
    with pytest.raises(ConfigError, match="TOKEN_DECIMALS"):
        load_settings({}, {"RECONCILE_TOKEN_DECIMALS": "{bad"})


def test_log_lines_are_redacted():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "connecting %s", ("pw=hunter2",), None)
    RedactingFilter(("hunter2",)).filter(record)
    assert record.getMessage() == "connecting pw=***"


def test_rpc_and_pushgateway_credentials_are_secrets():
    settings = load_settings(
        {
            "rpc_url": "https://rpc.example/soroban?apikey=k3y-abcdef",
            "pushgateway_url": "http://u:pgpass@pg:9091",
        },
        {},
    )
    assert {"k3y-abcdef", "pgpass"} <= set(settings.secrets)
    assert "k3y-abcdef" not in repr(settings) and "pgpass" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILE_RPC_TIMEOUT_SECONDS", "0"),
        ("RECONCILE_RPC_TIMEOUT_SECONDS", "-1"),
        ("RECONCILE_RPC_MAX_RETRIES", "-1"),
        ("RECONCILE_RPC_CONCURRENCY", "0"),
        ("RECONCILE_RPC_BATCH_SIZE", "0"),
        ("SMTP_PORT", "0"),
        ("RECONCILE_STALE_AFTER_HOURS", "0"),
        ("RECONCILE_MIN_READ_SHARE", "1.5"),
        ("RECONCILE_TOLERANCE_BASE_UNITS", "-5"),
    ],
)
def test_values_that_would_silently_change_behaviour_are_refused_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable} "):
        load_settings({}, {variable: value})


def test_a_bad_token_decimals_names_the_real_variable():
    with pytest.raises(ConfigError, match=r"^RECONCILE_TOKEN_DECIMALS: not JSON"):
        load_settings({}, {"RECONCILE_TOKEN_DECIMALS": "{bad"})


def test_a_tenant_id_longer_than_the_backend_allows_is_refused():
    with pytest.raises(
        ConfigError, match=r"^RECONCILE_TENANT_ID \(tenant_id\): must be at most 128"
    ) as refused:
        load_settings({"tenant_id": "t" * 10_000}, {})
    assert len(str(refused.value)) < 200


USDC = StrKey.encode_contract(b"\x01" * 32)
EURC = StrKey.encode_contract(b"\x02" * 32)


def test_currency_tokens_map_upper_cased_currencies_to_contracts():
    settings = load_settings({}, {"RECONCILE_CURRENCY_TOKENS": json.dumps({"usd ": USDC, "EUR": EURC})})
    assert settings.currency_tokens == {"USD": USDC, "EUR": EURC}
    assert load_settings({}, {}).currency_tokens is None  # not configured: currencies are not checked


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{bad", "not JSON"),
        ("[]", "expected a JSON object"),
        ("{}", "expected a JSON object"),
        (json.dumps({"USD": "GABC"}), "is not a currency and a C... contract address"),
        (json.dumps({"USD": USDC[:-1] + "A"}), "is not a currency and a C... contract address"),
        (json.dumps({"USD": 5}), "is not a currency and a C... contract address"),
        (json.dumps({"usd": USDC, "USD": EURC}), "currency 'USD' is listed twice"),
    ],
)
def test_a_bad_currency_tokens_map_names_the_variable(value, problem):
    with pytest.raises(ConfigError, match=r"^RECONCILE_CURRENCY_TOKENS: ") as refused:
        load_settings({}, {"RECONCILE_CURRENCY_TOKENS": value})
    assert problem in str(refused.value)
