"""Secrets are redacted before anything is sent, look-alikes are not (agent.redact).

The secrets are built at run time from random characters in each provider's documented shape
(no key-shaped literal sits in the repository for a scanner to trip on); the look-alikes are
the text a coding agent's tools really show: hashes, UUIDs, code that names a secret without
holding one, placeholders, words that contain a prefix.
"""

from __future__ import annotations

import json
import random
import string
import time
from pathlib import Path

import pytest

from ralph_monitor.agent.hook import events_for
from ralph_monitor.agent.loop import result_fields
from ralph_monitor.agent.redact import Redactor, redactor_from_config
from tests.hook_payloads import all_payloads

RNG = random.Random(15)
ALNUM = string.ascii_letters + string.digits


def rand(n: int, alphabet: str = ALNUM) -> str:
    text = "".join(RNG.choice(alphabet) for _ in range(n))
    return text if any(c.isdigit() for c in text) else "7" + text[1:]


def corpus() -> list[tuple[str, str, str]]:
    """(kind, text containing a secret, the secret)."""
    jwt = f"eyJ{rand(20)}.eyJ{rand(40)}.{rand(43, ALNUM + '_-')}"
    pem_body = "\n".join(rand(64, ALNUM + "+/") for _ in range(6))
    entries = {
        "anthropic_key": "sk-" + "ant-api03-" + rand(93, ALNUM + "_-") + "AA",
        "openai_key": "sk-" + "proj-" + rand(120, ALNUM + "_-"),
        "openai_legacy": "sk-" + rand(48),
        "aws_access_key_id": "AK" + "IA" + rand(16, string.ascii_uppercase + string.digits),
        "github_token": "gh" + "p_" + rand(36),
        "github_pat": "github" + "_pat_" + rand(82, ALNUM + "_"),
        "gitlab_token": "gl" + "pat-" + rand(20, ALNUM + "_-"),
        "slack_token": "xo" + "xb-" + rand(12, string.digits) + "-" + rand(24),
        "google_api_key": "AI" + "za" + rand(35, ALNUM + "_-"),
        "stripe_key": "sk" + "_live_" + rand(24),
        "huggingface_token": "h" + "f_" + rand(34),
        "npm_token": "np" + "m_" + rand(36),
        "pypi_token": "pypi-" + "AgEIcHlwaS5vcmc" + rand(60, ALNUM + "_-"),
        "sendgrid_key": "S" + "G." + rand(22, ALNUM + "_-") + "." + rand(43, ALNUM + "_-"),
        "jwt": jwt,
    }
    texts = [(kind, f"token found: {secret} (rotate it)", secret) for kind, secret in entries.items()]
    password = rand(18, ALNUM + "!@#%^*")
    aws_secret, rails, bearer, basic = rand(40, ALNUM + "/+"), rand(128, string.hexdigits.lower()), rand(40), rand(24)
    texts += [
        ("export", f"export OPENAI_API_KEY={entries['openai_key']}", entries["openai_key"]),
        ("env_file", f"DB_HOST=db\nDB_PASSWORD={password}\nDEBUG=1\n", password),
        ("quoted", f'password = "{password} with spaces"', f"{password} with spaces"),
        ("json", json.dumps({"user": "app", "client_secret": password}), password),
        ("yaml", f"database:\n  password: {password}\n", password),
        ("aws_secret", f"aws_secret_access_key = {aws_secret}", aws_secret),
        ("rails", f"secret_key_base: {rails}", rails),
        ("header", f'curl -H "Authorization: Bearer {bearer}" https://api.example.com', bearer),
        ("basic", f"Authorization: Basic {basic}==", basic),
        ("bearer", f"requests.get(url, headers={{'auth': 'Bearer {bearer}'}})", bearer),
        ("url", f"DATABASE_URL=postgres://app:{password}@db.internal:5432/shop", password),
        ("private_key", f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----", pem_body),
        ("private_key_cut", f"cat id_ed25519\n-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}", pem_body),
    ]
    return texts


LOOK_ALIKES = [
    "commit 3f786850e387550fdab836ed7e6dc881de23001b (HEAD -> main)",
    "session 00893aaf-19fa-41d2-8238-13269b9b3ca0 resumed",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "/home/dev/task-manager-configuration-files/settings.py",
    "sk-learn-tutorial-notebooks-for-beginners",
    "max_tokens=4096, tokens_used: 123456, token_count = 17",
    "token = tokenizer.encode(text)",
    'api_key = os.environ["OPENAI_API_KEY"]',
    "password: ${DB_PASSWORD}",
    "export API_KEY=$(pass show openai)",
    "Authorization: Bearer <your-token-here>",
    "secret_key = settings.SECRET_KEY",
    "password = None",
    "the password is required; secrets are stored in vault",
    "def get_password(user: str) -> str:",
    "AKIA is the prefix of an AWS access key id",
    "ghp_ is how GitHub tokens begin",
    "eyJhbGciOiJIUzI1NiJ9 is a JWT header",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "https://user@example.com/path and git@github.com:org/repo.git",
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
]


@pytest.mark.parametrize("kind, text, secret", corpus(), ids=[c[0] for c in corpus()])
def test_each_real_shaped_secret_is_redacted(kind: str, text: str, secret: str) -> None:
    redactor = Redactor()
    out = redactor.text(text)
    assert secret not in out
    assert "[REDACTED:" in out and redactor.count >= 1
    # What is not the secret stays readable.
    if kind in ("export", "env_file", "url", "json", "yaml"):
        assert out.split("[REDACTED:")[0] == text.split(secret)[0] or kind == "export"


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_survive(text: str) -> None:
    redactor = Redactor()
    assert redactor.text(text) == text and redactor.count == 0


def test_settings_add_patterns_or_turn_it_off() -> None:
    key = "sk-" + "proj-" + rand(60)
    custom = redactor_from_config({"redaction": {"patterns": [r"corp-[0-9a-f]{16}", "([unclosed"]}})
    assert custom.text(f"id corp-{'ab12' * 4} and {key}") == "id [REDACTED:custom] and [REDACTED:openai_key]"
    off = redactor_from_config({"redaction": {"enabled": False}})
    assert off.text(f"export KEY={key}") == f"export KEY={key}" and off.count == 0
    assert redactor_from_config({"redaction": "nonsense"}).enabled


def test_the_hook_redacts_tool_input_and_output_and_counts() -> None:
    key, password = "sk-" + "ant-api03-" + rand(90, ALNUM + "_-"), rand(20)
    payload = all_payloads()["PostToolUse"]
    payload["tool_name"] = "Bash"
    payload["tool_input"] = {"command": f"export ANTHROPIC_API_KEY={key} && cat .env"}
    payload["tool_response"] = {"stdout": f"DB_PASSWORD={password}\nPORT=5432\n", "stderr": ""}
    payload["env"] = {"SERVICE_TOKEN": password}
    event = events_for(json.dumps(payload).encode(), environ={})[0]
    line = json.dumps(event)
    assert key not in line and password not in line
    assert event["data"]["redactions"] == 3
    assert event["data"]["tool_response"]["stdout"] == "DB_PASSWORD=[REDACTED:assignment]\nPORT=5432\n"
    # A secret across the cut is redacted whole, not left half-visible.
    payload["tool_response"] = {"stdout": "x" * 4089 + " " + key, "stderr": ""}
    cut = events_for(json.dumps(payload).encode(), max_field_bytes=4096, environ={})[0]["data"]["tool_response"]
    assert cut["stdout"].startswith("x" * 4089 + " [REDAC") and "sk-" not in cut["stdout"]


def test_the_loop_redacts_the_result_and_refused_inputs() -> None:
    key = "gh" + "p_" + rand(36)
    fields = result_fields({
        "type": "result", "subtype": "success", "is_error": False, "result": f"I set GITHUB_TOKEN={key}",
        "permission_denials": [{"tool_name": "Bash", "tool_use_id": "t1",
                                "tool_input": {"command": f"git push https://x:{key}@github.com/o/r"}}]})
    assert key not in json.dumps(fields)
    assert fields["attention"] == ["permission_denied"] and fields["permission_denial_count"] == 1


def test_redaction_costs_little_per_field() -> None:
    text = (Path(__file__).read_text() * 3)[:4096]
    redactor = Redactor()
    started = time.perf_counter()
    for _ in range(50):
        redactor.text(text)
    assert (time.perf_counter() - started) / 50 < 0.01
