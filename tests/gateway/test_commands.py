from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from gateway.models import LlmModel, Provider
from policies.models import ApiKey, Organization
from policies.selectors import apikey_for_secret

pytestmark = pytest.mark.django_db


def test_load_prices_creates_the_seed_catalog_once() -> None:
    call_command("load_prices", verbosity=0)
    count = LlmModel.objects.count()
    assert count >= 10
    assert Provider.objects.filter(org=None, name="openai").exists()
    mini = LlmModel.objects.get(name="gpt-4o-mini")
    assert mini.input_price_per_million == Decimal("0.150000")
    assert mini.cached_input_price_per_million == Decimal("0.075000")
    call_command("load_prices", verbosity=0)
    assert LlmModel.objects.count() == count


def test_load_prices_updates_prices_only_when_asked(tmp_path: Path) -> None:
    call_command("load_prices", verbosity=0)
    price_list = {
        "providers": [],
        "models": [
            {"name": "gpt-4o-mini", "provider": "openai", "input": "0.123456", "output": "1"}
        ],
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(price_list))
    call_command("load_prices", "--file", str(path), verbosity=0)
    assert LlmModel.objects.get(name="gpt-4o-mini").input_price_per_million == Decimal("0.15")
    call_command("load_prices", "--file", str(path), "--update", verbosity=0)
    assert LlmModel.objects.get(name="gpt-4o-mini").input_price_per_million == Decimal("0.123456")


def test_load_prices_rejects_a_price_with_too_many_decimals(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9"}],
                "models": [{"name": "m", "provider": "p", "input": "0.0000001"}],
            }
        )
    )
    with pytest.raises(CommandError, match="at most 6 decimals"):
        call_command("load_prices", "--file", str(path), verbosity=0)


def test_bootstrap_creates_a_working_demo_key_once(tmp_path: Path) -> None:
    info_file = tmp_path / "first-run.json"
    call_command("tollgate_bootstrap", "--info-file", str(info_file), verbosity=0)
    info = json.loads(info_file.read_text())
    key = apikey_for_secret(raw=info["api_key"])
    assert key is not None and key.org.slug == "demo"
    assert key.default_feature is not None and key.default_feature.name == "chat"
    call_command("tollgate_bootstrap", "--info-file", str(info_file), verbosity=0)
    assert Organization.objects.count() == 1
    assert ApiKey.objects.count() == 1


def test_long_commands_show_a_progress_bar_when_asked(tmp_path: Path, org_a) -> None:  # type: ignore[no-untyped-def]
    import io

    err = io.StringIO()
    call_command("load_prices", progress=True, stdout=io.StringIO(), stderr=err)
    assert "loading prices" in err.getvalue() and "100%" in err.getvalue()
    err = io.StringIO()
    call_command("audit_verify", progress=True, stdout=io.StringIO(), stderr=err)
    assert "verifying" in err.getvalue() and "100%" in err.getvalue()
    err = io.StringIO()
    out = tmp_path / "audit.csv"
    call_command("audit_export", progress=True, out=str(out), stdout=io.StringIO(), stderr=err)
    assert "exporting" in err.getvalue() and "100%" in err.getvalue()
    # Not a terminal and not asked: no bar, so logs and pipes stay clean.
    err = io.StringIO()
    call_command("audit_verify", stdout=io.StringIO(), stderr=err)
    assert err.getvalue() == ""
