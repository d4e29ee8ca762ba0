"""The README's tables say what the code does: every error code the services answer is listed, and
every size limit appears with its default."""

from __future__ import annotations

import re

from generation.prompts import MIN_IMAGE_B64_CHARS
from generation.settings import FrontSettings, RequestLimits
from generation.testing import REPO

README = (REPO / "README.md").read_text()
# Codes written as literals: error classes, ServiceError(code=...), error_response(...), error_body(...).
_CODE_PATTERNS = (
    r'code(?:: str)? = "([a-z_]+)"',
    r'error_body\(\s*"([a-z_]+)"',
    r'error="([a-z_]+)"',
    r'code="([a-z_]+)"',
    r'"error": "([a-z_]+)"',
    r'error_response\(\d+, "([a-z_]+)"',
    r'\d{3}: "([a-z_]+)"',
)


def emitted_codes() -> set[str]:
    codes: set[str] = set()
    for path in (REPO / "generation").rglob("*.py"):
        text = path.read_text()
        for pattern in _CODE_PATTERNS:
            codes.update(re.findall(pattern, text))
    codes.discard("bad_request")  # ServiceError's base default, never raised as such
    codes.discard("http_error")  # the fallback for a status Starlette raises that none of our routes can
    return codes


def test_every_error_code_the_services_answer_is_in_the_readme() -> None:
    codes = emitted_codes()
    assert {"invalid_prompt", "method_not_allowed", "not_found", "headers_too_large"} <= codes
    missing = sorted(code for code in codes if f"`{code}`" not in README)
    assert not missing, f"error codes the README does not list: {missing}"


def test_limits_table_matches_the_settings() -> None:
    limits = RequestLimits()
    rows = {
        "SPLATGEN_MAX_IMAGE_MB": f"{limits.max_image_mb:g}",
        "SPLATGEN_MAX_PROMPT_CHARS": f"{limits.max_prompt_chars}",
        "SPLATGEN_MAX_REQUEST_MB": f"({limits.max_request_mb:g})",
        "SPLATGEN_MAX_HEADER_KB": f"{limits.max_header_kb:g}",
        "SPLATGEN_MEMORY_CLEANUP_GB": f"{FrontSettings().memory_cleanup_gb:g}",
        "SPLATGEN_MEMORY_REFUSE_GB": f"{FrontSettings().memory_refuse_gb:g}",
    }
    for variable, default in rows.items():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{variable}`")), None)
        assert row is not None, f"{variable} is not in the README's configuration table"
        assert default in row.split("|")[2], (variable, default, row)


def test_the_image_rule_in_the_readme_states_the_threshold() -> None:
    section = README[README.index("### Telling an image from text") :]
    assert f"at least {MIN_IMAGE_B64_CHARS} characters of the base64 alphabet" in section
    assert "TRELLIS keeps only\nalpha > 204" in section or "alpha > 204" in section
